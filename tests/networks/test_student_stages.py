"""Deep RD stages of the classification students: the stage cut reproduces forward_features bit for bit from every
stage, the hybrid path's gradients stop at the cut, and the model (keys, forward, random numbers) is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_rd.networks import StudentClassifier, list_students

# (name, spatial_dims, extra kwargs): every named student, the timm/torchvision families, MONAI ResNets/DenseNets
STUDENTS = [(name, 2, {}) for name in list_students()] + [
    ("timm:resnet10t", 2, {}),
    ("timm:efficientnet_b0", 2, {}),
    ("timm:mobilenetv3_small_100", 2, {}),
    ("timm:convnext_atto", 2, {}),
    ("torchvision:efficientnet_b0", 2, {}),
    ("torchvision:regnet_x_400mf", 2, {}),
    ("torchvision:densenet121", 2, {}),
    ("monai:resnet10", 2, {}),
    ("monai:resnet10", 3, {}),
    ("monai:resnet18", 3, {}),
    ("monai:densenet121", 3, {"init_features": 8, "growth_rate": 4, "block_config": (2, 2, 2, 2)}),
]


def _build(name: str, dims: int, kwargs: dict, seed: int = 0) -> StudentClassifier:
    torch.manual_seed(seed)
    return StudentClassifier(name, num_classes=3, in_channels=1, spatial_dims=dims, **kwargs)


def _input(dims: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, *(32,) * dims, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, dims, kwargs", STUDENTS, ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_forward_from_each_stage_is_forward_features(name, dims, kwargs):
    """A wrong cut (a module run twice, skipped, or the pooling of another family) breaks bitwise equality; the
    stage maps must come out of the cut untouched (a later in-place op on them would change them)."""
    model = _build(name, dims, kwargs).eval()
    x = _input(dims)
    with torch.no_grad():
        z = model.forward_features(x)
        maps = model.forward_stages(x)
        kept = [m.clone() for m in maps]
        assert len(maps) == len(model.stage_names) >= 3
        for i, f in enumerate(maps):
            assert torch.equal(model.forward_from(i, f), z), f"stage {i} ({model.stage_names[i]})"
        assert all(torch.equal(a, b) for a, b in zip(maps, kept))  # forward_from changed no map in place
    # strides: each stage at most as large as the one before, and the last is the map the backbone pools
    sizes = [m.shape[2:] for m in maps]
    assert all(all(b <= a for a, b in zip(s, t)) for s, t in zip(sizes, sizes[1:]))
    assert model.stage_shapes(x.shape[2:]) == [tuple(m.shape[1:]) for m in maps]


@pytest.mark.parametrize(
    "name, dims", [("resnet18", 2), ("mobilenetv2", 2), ("shufflenetv2", 2), ("monai:resnet10", 3)]
)
def test_hybrid_path_gradients_stop_at_the_cut(name, dims, assert_gradients_stop_at_stage):
    """A loss on forward_from(i, f) trains the stages after i and reaches f, and never the stages <= i (whose
    modules are not run), in train mode as DRD uses it."""
    model = _build(name, dims, {}).train()
    maps = model.forward_stages(_input(dims))
    n = len(maps)
    for i in range(n):
        model.zero_grad(set_to_none=True)
        f = maps[i].detach().requires_grad_(True)
        model.classify(model.forward_from(i, f)).square().mean().backward()
        assert f.grad is not None and f.grad.abs().sum() > 0
        assert_gradients_stop_at_stage(model, i, n)


def test_resnet18_demo_stage_shapes():
    """The demo's student (ResNet18 at 64 px, gray): layer1..layer4 at strides 4 to 32."""
    model = _build("resnet18", 2, {})
    assert model.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert model.stage_shapes((64, 64)) == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    stem = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Sequential"]
    assert [type(m).__name__ for m in model.stage_modules(0)] == stem
    assert model.training  # the dry run restored the mode


@pytest.mark.parametrize(
    "name, names, shapes",
    [
        ("mobilenetv2", ("features.3", "features.6", "features.13", "features.18"),
         [(24, 16, 16), (32, 8, 8), (96, 4, 4), (1280, 2, 2)]),
        ("shufflenetv2", ("maxpool", "stage2", "stage3", "conv5"),
         [(24, 16, 16), (116, 8, 8), (232, 4, 4), (1024, 2, 2)]),
        ("timm:efficientnet_b0", ("blocks.1", "blocks.2", "blocks.4", "bn2"),
         [(24, 16, 16), (40, 8, 8), (112, 4, 4), (1280, 2, 2)]),
    ],
)
def test_stage_names_and_shapes(name, names, shapes):
    """The stride rule (torchvision) and feature_info (timm) cut at the last module of strides 4, 8, 16, 32; the
    last stage runs to the pooling (1280 channels after the 1x1 head conv)."""
    model = _build(name, 2, {})
    assert model.stage_names == names and model.stage_shapes((64, 64)) == shapes


def test_the_model_is_unchanged_by_its_stages():
    """Nothing is registered or drawn: the state_dict keys, the global random numbers after building and forward are
    those of the plain torchvision ResNet18 with a linear head built from the same seed, before and after the stage
    methods ran."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    head = nn.Linear(512, 3)
    after_reference = torch.rand(4)
    torch.manual_seed(0)
    model = StudentClassifier("resnet18", num_classes=3)
    assert torch.equal(torch.rand(4), after_reference)
    keys = list(model.state_dict())
    expected_keys = [f"backbone.{k}" for k in reference.state_dict() if not k.startswith("fc.")]
    assert keys == expected_keys + ["head.weight", "head.bias"]

    x = torch.rand(2, 3, 32, 32)
    model.eval(), reference.eval()
    reference.fc = head
    expected = reference(x)
    assert torch.equal(model(x), expected)
    model.forward_from(1, model.forward_stages(x)[1])
    model.stage_shapes((32, 32))
    assert list(model.state_dict()) == keys and torch.equal(model(x), expected)


def test_heads_with_hidden_layers_give_the_right_width():
    """MobileNetV3's classifier has a hidden layer: the features are its input (576), and timm's pools to its
    head_hidden_size (1024); before, both students raised a shape error in their first forward."""
    tv = _build("mobilenetv3_small", 2, {}).eval()
    timm_model = _build("timm:mobilenetv3_small_100", 2, {}).eval()
    x = _input(2)
    assert tv.num_features == 576 and tv(x).shape == (2, 3)
    assert timm_model.num_features == 1024 and timm_model(x).shape == (2, 3)


def test_unsupported_students_and_indices_are_refused():
    """A custom module or a ViT has no stages (the error says which are supported); an index outside 0..N-1 is
    refused, not wrapped around."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    custom = StudentClassifier(net, 2, num_features=4)
    with pytest.raises(ValueError, match=r"cannot cut a torch\.nn\.modules\.container\.Sequential.*supported"):
        custom.forward_stages(torch.rand(1, 1, 8, 8))
    vit = StudentClassifier("timm:vit_tiny_patch16_224", 2, img_size=32, depth=1)
    with pytest.raises(ValueError, match="keeps one stride throughout"):
        _ = vit.stage_names
    model = _build("resnet18", 2, {})
    f = torch.rand(1, 512, 1, 1)
    with pytest.raises(IndexError, match=r"there are 4 stages, 0 to 3"):
        model.forward_from(4, f)
    with pytest.raises(IndexError, match="out of range"):
        model.forward_from(-1, f)
