"""Each named teacher: build the architecture, write a checkpoint in the published key layout, load it strictly
through ``create_teacher`` and check the feature map. (Real hub weights cannot be downloaded in CI.)"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from monai_rd.networks import FrozenTeacher, create_teacher
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError
from monai_rd.networks.teachers.registry import get_teacher_spec


def _randomise(model: nn.Module) -> nn.Module:
    """Non-default weights and BN statistics so that a wrong mapping would be visible."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) * 0.1 + (1.0 if "running_var" in name else 0.0))
    return model


def _check(teacher: FrozenTeacher, name: str, grid: tuple[int, int], x: torch.Tensor | None = None) -> torch.Tensor:
    spec = get_teacher_spec(name)
    x = torch.rand(1, 1, 64, 64) if x is None else x
    y = teacher(x)
    assert y.shape == (x.shape[0], spec.out_channels, *grid)
    assert torch.isfinite(y).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.name == name
    return y


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return [tuple(v.shape) for v in sa.values()] == [tuple(v.shape) for v in sb.values()] and all(
        torch.equal(x, y) for x, y in zip(sa.values(), sb.values())
    )


# --------------------------------------------------------------------------------------------- PMC-CLIP
def test_pmc_clip_checkpoint_layout(tmp_path):
    from monai_rd.networks.teachers.pmc_clip import ModifiedResNet

    visual = _randomise(ModifiedResNet(layers=(3, 4, 6, 3), output_dim=768, heads=32, image_size=224, width=64))
    state = {f"module.visual.{k}": v for k, v in visual.state_dict().items()}
    # published layout (OpenAI CLIP ModifiedResNet names, DDP prefix, PMC-CLIP embed_dim 768)
    assert state["module.visual.attnpool.positional_embedding"].shape == (50, 2048)
    assert state["module.visual.attnpool.c_proj.weight"].shape == (768, 2048)
    assert state["module.visual.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["module.visual.conv3.weight"].shape == (64, 32, 3, 3)
    state["module.text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(4, 8)  # other towers are skipped
    state["module.logit_scale"] = torch.ones(())
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 100, "state_dict": state, "optimizer": {"lr": torch.tensor(1e-4)}}, path)

    teacher = create_teacher("pmc-clip-rn50", weights=path)
    assert _same_weights(teacher.model, visual)
    assert torch.allclose(teacher.mean, torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    x = torch.full((1, 1, 64, 64), 0.5)
    y = _check(teacher, "pmc-clip-rn50", (7, 7), x)
    with torch.no_grad():
        ref = visual.eval().forward_features(teacher.preprocess(x))  # the layer-4 map, not the attention pool
    assert torch.allclose(y, ref, atol=1e-5)

    del state["module.visual.layer3.5.bn2.running_mean"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointKeyError, match=r"layer3\.5\.bn2\.running_mean"):
        create_teacher("pmc-clip-rn50", weights=path)


def test_pmc_clip_matches_open_clip_modified_resnet_keys():
    pytest.importorskip("open_clip", reason="open_clip_torch cross-check of the CLIP RN50 key layout")
    from open_clip.modified_resnet import ModifiedResNet as OCModifiedResNet

    from monai_rd.networks.teachers.pmc_clip import ModifiedResNet

    ours = ModifiedResNet(output_dim=768).state_dict()
    ref = OCModifiedResNet(layers=(3, 4, 6, 3), output_dim=768, heads=32, image_size=224, width=64).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


# --------------------------------------------------------------------------------------------- RadImageNet
def test_radimagenet_resnet50_official_and_torchvision_layouts(tmp_path):
    import torchvision

    from monai_rd.networks.teachers.radimagenet import RadImageNetBackbone

    tv = _randomise(torchvision.models.resnet50(weights=None))
    official = RadImageNetBackbone("resnet50")
    official.load_state_dict({k: v for k, v in _official_from_tv(tv.state_dict()).items()})
    state = official.state_dict()
    # the release's Backbone: nn.Sequential(*resnet50.children()[:9]) -> conv1 = 0, bn1 = 1, layer1..4 = 4..7
    assert {
        "backbone.0.weight", "backbone.1.running_var", "backbone.4.0.downsample.0.weight", "backbone.7.2.bn3.weight"
    } <= set(state)
    assert not any(k.startswith(("backbone.8", "fc")) for k in state)
    torch.save(state, tmp_path / "ResNet50.pt")
    torch.save(tv.state_dict(), tmp_path / "tv.pth")  # torchvision layout with fc head

    t = create_teacher("radimagenet-resnet50", weights=tmp_path / "ResNet50.pt")
    _check(t, "radimagenet-resnet50", (7, 7))
    assert _same_weights(t.model, create_teacher("radimagenet-resnet50", weights=tmp_path / "tv.pth").model)
    assert _same_weights(t.model, nn.Sequential(*list(tv.children())[:8]))
    assert torch.allclose(t.mean, torch.tensor([0.5, 0.5, 0.5]))
    assert torch.allclose(t.std, torch.tensor([0.5, 0.5, 0.5]))

    bad = dict(state)
    bad["backbone.9.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"backbone\.9\.weight"):
        create_teacher("radimagenet-resnet50", weights=tmp_path / "bad.pt")


def _official_from_tv(state: dict) -> dict:
    idx = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in idx:
            out[f"backbone.{idx[head]}.{rest}"] = v
    return out


def test_radimagenet_densenet121_layouts(tmp_path):
    import torchvision

    from monai_rd.networks.teachers.radimagenet import _to_backbone_layout

    tv = _randomise(torchvision.models.densenet121(weights=None))
    official = {
        f"backbone.0.{k[len('features.'):]}": v for k, v in tv.state_dict().items() if k.startswith("features.")
    }
    assert {
        "backbone.0.conv0.weight", "backbone.0.denseblock4.denselayer16.conv2.weight", "backbone.0.norm5.weight"
    } <= set(official)
    torch.save(official, tmp_path / "DenseNet121.pt")

    t = create_teacher("radimagenet-densenet121", weights=tmp_path / "DenseNet121.pt")
    _check(t, "radimagenet-densenet121", (7, 7))
    assert _same_weights(t.model, tv.features)  # the `features` map (through norm5)
    # pre-0.3 torchvision names ("norm.1") and plain torchvision keys map onto the release layout
    assert _to_backbone_layout("features.denseblock1.denselayer2.norm.1.running_var", "densenet121") == (
        "backbone.0.denseblock1.denselayer2.norm1.running_var"
    )
    assert _to_backbone_layout("backbone.0.norm5.weight", "densenet121") == "backbone.0.norm5.weight"


# --------------------------------------------------------------------------------------------- LVM-Med
def test_lvm_med_resnet50(tmp_path):
    import torchvision

    tv = _randomise(torchvision.models.resnet50(weights=None))
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "lvmmed_resnet.torch")
    teacher = create_teacher("lvm-med-resnet50", weights=tmp_path / "lvmmed_resnet.torch")
    _check(teacher, "lvm-med-resnet50", (7, 7), torch.rand(1, 3, 64, 64))
    assert _same_weights(teacher.model, nn.Sequential(*list(tv.children())[:-2]))
    assert torch.allclose(teacher.mean, torch.tensor([0.485, 0.456, 0.406]))
    del state["layer4.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.torch")
    with pytest.raises(CheckpointKeyError, match=r"layer4\.0\.conv1\.weight"):
        create_teacher("lvm-med-resnet50", weights=tmp_path / "broken.torch")


def _sam_encoder_state(depth: int, prefix: str = "") -> dict:
    """A SAM ViT-B image-encoder state dict in the published key names (mlp.lin1/lin2), at reduced depth."""
    import timm

    vit = _randomise(timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, depth=depth))
    state = {
        prefix + k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2."): v
        for k, v in vit.state_dict().items()
    }
    return state


def test_lvm_med_vit_b_reduced_depth(tmp_path):
    state = _sam_encoder_state(depth=2)
    assert state["pos_embed"].shape == (1, 64, 64, 768)
    assert state["blocks.0.attn.rel_pos_h"].shape == (27, 64)  # windowed block (window 14)
    assert {"blocks.1.mlp.lin1.weight", "neck.0.weight", "neck.3.bias", "patch_embed.proj.weight"} <= set(state)
    torch.save(state, tmp_path / "lvmmed_vit.pth")
    teacher = create_teacher("lvm-med-vit-b", weights=tmp_path / "lvmmed_vit.pth", depth=2, input_size=(256, 256))
    _check(teacher, "lvm-med-vit-b", (16, 16))

    # a full SAM checkpoint (image_encoder.* next to the prompt encoder / mask decoder) loads the same encoder
    full = _sam_encoder_state(depth=2, prefix="image_encoder.")
    full["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    full["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    torch.save(full, tmp_path / "sam_vit_b.pth")
    create_teacher("lvm-med-vit-b", weights=tmp_path / "sam_vit_b.pth", depth=2, input_size=(256, 256))

    with pytest.raises(CheckpointKeyError, match=r"140 missing key\(s\) \[blocks\.10\.attn"):  # 2 blocks != 12
        create_teacher("lvm-med-vit-b", weights=tmp_path / "lvmmed_vit.pth", input_size=(256, 256))


@pytest.mark.slow
def test_lvm_med_vit_b_full_native(tmp_path):
    torch.save(_sam_encoder_state(depth=12), tmp_path / "lvmmed_vit.pth")
    teacher = create_teacher("lvm-med-vit-b", weights=tmp_path / "lvmmed_vit.pth")
    assert teacher.input_size == (1024, 1024)
    _check(teacher, "lvm-med-vit-b", (64, 64))


# --------------------------------------------------------------------------------------------- BiomedCLIP
def test_biomedclip_open_clip_layout(tmp_path):
    import timm

    trunk = _randomise(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2))
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    assert {
        "visual.trunk.cls_token", "visual.trunk.pos_embed", "visual.trunk.blocks.1.attn.qkv.weight",
        "visual.trunk.norm.weight",
    } <= set(state)
    state["visual.head.proj.weight"] = torch.zeros(512, 768)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(8, 768)
    state["text.proj.0.weight"] = torch.zeros(640, 768)
    state["logit_scale"] = torch.ones(())
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": {"embed_dim": 512}, "preprocess_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))

    teacher = create_teacher("biomedclip-vit-b16", weights=folder, depth=2)
    x = torch.rand(1, 1, 64, 64)
    y = _check(teacher, "biomedclip-vit-b16", (14, 14), x)
    assert torch.allclose(teacher.mean, torch.tensor([0.4, 0.4, 0.4]))
    with torch.no_grad():
        ref = trunk.eval().forward_features(teacher.preprocess(x))[:, 1:].transpose(1, 2).reshape(1, 768, 14, 14)
    assert torch.allclose(y, ref, atol=1e-5)

    state["visual.extra.weight"] = torch.zeros(1)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointKeyError, match=r"visual\.extra\.weight"):
        create_teacher("biomedclip-vit-b16", weights=folder, depth=2)


# --------------------------------------------------------------------------------------------- RAD-DINO
def test_rad_dino_transformers_layout(tmp_path):
    transformers = pytest.importorskip("transformers", reason="RAD-DINO is a transformers Dinov2Model")
    from safetensors.torch import save_file

    from monai_rd.networks.teachers.rad_dino import RAD_DINO_CONFIG

    cfg = dict(RAD_DINO_CONFIG, num_hidden_layers=2)
    model = _randomise(transformers.Dinov2Model(transformers.Dinov2Config(**cfg)))
    # the published model.safetensors uses the transformers 4.x names, whatever the installed version calls them
    to_published = {
        ".attention.q_proj.": ".attention.attention.query.", ".attention.k_proj.": ".attention.attention.key.",
        ".attention.v_proj.": ".attention.attention.value.", ".attention.o_proj.": ".attention.output.dense.",
    }
    state = {}
    for k, v in model.state_dict().items():
        for new, old in to_published.items():
            k = k.replace(new, old)
        state[k] = v
    assert {"embeddings.cls_token", "embeddings.mask_token", "embeddings.patch_embeddings.projection.weight",
            "encoder.layer.1.layer_scale1.lambda1", "encoder.layer.0.attention.attention.query.weight",
            "layernorm.weight"} <= set(state)
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 768)
    folder = tmp_path / "rad-dino"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="dinov2")))
    pre = {
        "crop_size": {"height": 518, "width": 518}, "image_mean": [0.51, 0.51, 0.51], "image_std": [0.25, 0.25, 0.25]
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))

    teacher = create_teacher("rad-dino", weights=folder)
    assert _same_weights(teacher.model.model, model)
    assert teacher.input_size == (518, 518)
    assert torch.allclose(teacher.mean, torch.tensor([0.51, 0.51, 0.51]))
    _check(teacher, "rad-dino", (37, 37))

    with pytest.raises(CheckpointKeyError, match=r"encoder\.layer\.2\."):  # published config says 12 layers
        create_teacher("rad-dino", weights=folder / "model.safetensors", num_hidden_layers=3)
