"""The ``monai:<Net>`` teacher prefix: any ``monai.networks.nets`` network with a state_dict written here, its
feature layer taken with a hook (the forward stops there), SwinUNETR's encoder-only path, and early validation."""

from __future__ import annotations

import monai.networks.nets as nets
import pytest
import torch
from monai.networks.nets import ResNet, SwinUNETR

from monai_rd.networks import FrozenTeacher, create_teacher
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError
from monai_rd.networks.teachers.monai_net import window_mean_std

RESNET = dict(block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32), spatial_dims=3, n_input_channels=1,
              num_classes=3)
SWIN = dict(in_channels=1, out_channels=2, feature_size=12)


@pytest.fixture
def resnet_file(tmp_path, randomise):
    torch.manual_seed(0)
    net = randomise(ResNet(**RESNET))
    path = tmp_path / "resnet.pt"
    # a DistributedDataParallel training checkpoint
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net, path


def _resnet_teacher(path, **kwargs) -> FrozenTeacher:
    options = dict(prefix="module.", feature_layer="layer3", input_size=(32, 32, 32))
    options.update(kwargs)
    return create_teacher("monai:ResNet", weights=path, **options, **RESNET)


def test_feature_layer_is_the_map_and_later_layers_never_run(resnet_file):
    net, path = resnet_file
    teacher = _resnet_teacher(path)
    assert isinstance(teacher, FrozenTeacher) and teacher.name == "monai:ResNet@layer3"
    assert not any(p.requires_grad for p in teacher.parameters())
    after: list[str] = []
    for name in ("layer4", "avgpool", "fc"):
        teacher.model.model.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: after.append(name))

    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    y = teacher(x)
    with torch.no_grad():
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        expected = net.layer3(net.layer2(net.layer1(h)))
    assert y.shape == expected.shape and y.shape[:2] == (2, 16) and y.ndim == 5
    assert torch.allclose(y, expected, atol=1e-6)
    assert after == []  # the forward stopped at layer3
    assert teacher.out_channels == 16
    # the hook is removed after each call: the plain network still runs to its classifier
    assert net(x).shape == (2, 3) and not teacher.model.model.get_submodule("layer3")._forward_hooks

    layer2 = _resnet_teacher(path, feature_layer="layer2")
    assert layer2.name == "monai:ResNet@layer2" and layer2.fingerprint() != teacher.fingerprint()
    assert layer2(x).shape[1] == 8


def test_strict_loading_names_keys(resnet_file, tmp_path):
    net, _ = resnet_file
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    del state["module.layer2.0.bn2.running_var"]
    state["module.head.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointKeyError, match=r"missing.*layer2\.0\.bn2\.running_var.*unexpected.*head\.weight"):
        _resnet_teacher(bad)
    # without prefix= the DDP names do not match either
    with pytest.raises(CheckpointKeyError, match=r"unexpected key\(s\) \[module\.bn1\.bias"):
        _resnet_teacher(resnet_file[1], prefix=None)


def test_options_are_validated_early(resnet_file):
    _, path = resnet_file
    with pytest.raises(KeyError, match=r"no network 'SwinUNTER'.*Closest: \['SwinUNETR'"):
        create_teacher("monai:SwinUNTER", weights=path)
    with pytest.raises(ValueError, match=r"feature_layer 'layer5' is not a submodule of ResNet.*'layer4'.*valid names"):
        _resnet_teacher(path, feature_layer="layer5")
    with pytest.raises(ValueError, match=r"needs feature_layer=<dotted submodule name>"):
        _resnet_teacher(path, feature_layer=None)
    with pytest.raises(ValueError, match=r"needs weights=<state_dict file"):
        create_teacher("monai:ResNet", feature_layer="layer3", input_size=(32, 32, 32), **RESNET)
    with pytest.raises(ValueError, match=r"needs input_size="):
        _resnet_teacher(path, input_size=None)
    with pytest.raises(ValueError, match=r"ResNet\(\*\*\{.*failed.*constructor arguments of ResNet\("):
        create_teacher("monai:ResNet", weights=path, feature_layer="layer3", input_size=(32, 32, 32), depth=7, **RESNET)
    with pytest.raises(ValueError, match=r"give both or neither"):
        _resnet_teacher(path, intensity_range=(-1000, 1000))
    # a layer whose output is not a dense map is refused when it runs, naming it
    teacher = _resnet_teacher(path, feature_layer="fc")
    with pytest.raises(RuntimeError, match=r"feature_layer 'fc' returned \(1, 3\).*dense"):
        teacher(torch.rand(1, 1, 32, 32, 32))


def test_window_mean_std_maps_the_data_window_onto_the_teachers():
    assert window_mean_std((-1000, 1000), None) == ((0.0,), (1.0,))
    mean, std = window_mean_std((-1000, 1000), (-57, 164), channels=2)
    assert len(mean) == len(std) == 2
    hu = torch.tensor([-57.0, 40.0, 164.0])
    x = (hu + 57) / 221  # the data transforms' [0, 1]
    assert torch.allclose((x - mean[0]) / std[0], (hu + 1000) / 2000)
    with pytest.raises(ValueError, match="two increasing numbers"):
        window_mean_std((1000, -1000), None)


def test_intensity_windows_set_the_teachers_normalisation(resnet_file):
    _, path = resnet_file
    teacher = _resnet_teacher(path, intensity_range=(-1000, 1000), data_intensity_range=(-57, 164))
    x = torch.rand(1, 1, 32, 32, 32)
    assert torch.allclose(teacher.preprocess(x), (-57 + x * 221 + 1000) / 2000, atol=1e-6)
    assert teacher.fingerprint() != _resnet_teacher(path).fingerprint()


@pytest.fixture
def swin_file(tmp_path):
    torch.manual_seed(0)
    net = SwinUNETR(**SWIN).eval()
    path = tmp_path / "swin_unetr.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_swin_unetr_runs_only_its_encoder(swin_file, monkeypatch):
    net, path = swin_file
    calls: list[str] = []

    class Spy(SwinUNETR):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for name in ("encoder1", "encoder10", "decoder5", "decoder1", "out"):
                getattr(self, name).register_forward_hook(lambda m, a, o, name=name: calls.append(name))
            calls.append("built")

    monkeypatch.setattr(nets, "SwinUNETR", Spy)
    teacher = create_teacher("monai:SwinUNETR", weights=path, input_size=(64, 32, 32), **SWIN)
    assert teacher.name == "monai:SwinUNETR@swinViT[4]"
    x = torch.rand(1, 1, 64, 32, 32)
    y = teacher(x)
    assert calls == ["built"]  # no decoder hook fired
    with torch.no_grad():
        expected = net.swinViT(x, normalize=True)[4]
    assert y.shape == (1, 16 * 12, 2, 1, 1) and torch.allclose(y, expected, atol=1e-5)
    assert {n.split(".")[0] for n, _ in teacher.model.named_parameters()} == {"encoder"}

    stage1 = create_teacher("monai:SwinUNETR", weights=path, input_size=(64, 32, 32), stage=1, **SWIN)
    assert stage1(x).shape == (1, 2 * 12, 16, 8, 8) and stage1.name == "monai:SwinUNETR@swinViT[1]"


def test_swin_unetr_options_are_validated_early(swin_file):
    _, path = swin_file
    with pytest.raises(ValueError, match=r"multiple of 32 \(patch_size \*\* 5\)\. Pass input_size=\(32, 32, 64\)"):
        create_teacher("monai:SwinUNETR", weights=path, input_size=(32, 32, 70), **SWIN)
    size = dict(input_size=(32, 32, 32), **SWIN)
    with pytest.raises(ValueError, match=r"'swinViT\.layers1' of SwinUNETR is a ModuleList.*'swinViT\.layers1\.0'"):
        create_teacher("monai:SwinUNETR", weights=path, feature_layer="swinViT.layers1", **size)
    with pytest.raises(ValueError, match=r"feature_layer or stage, not both"):
        create_teacher("monai:SwinUNETR", weights=path, feature_layer="encoder2", stage=1, **size)
    with pytest.raises(ValueError, match=r"'swin-unetr-ssl'"):
        create_teacher("monai:SwinUNETR", **size)
    # feature_layer works on SwinUNETR too (generic hook): a stage block inside the encoder
    teacher = create_teacher("monai:SwinUNETR", weights=path, feature_layer="swinViT.layers2.0", **size)
    assert teacher(torch.rand(1, 1, 32, 32, 32)).shape == (1, 4 * 12, 4, 4, 4)
