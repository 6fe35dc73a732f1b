"""Deep RD stages of the segmentation students (encoder levels): forward_from reproduces forward_features bit for
bit from every level, takes its skips from the given maps, stops gradients at the cut, and changes nothing in the
model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet, UNet

from monai_rd.networks import SegmentationStudent

# name, kwargs, levels: (channels, spatial divisor) per level at a 32^d input
TINY = {
    "unet": ({"channels": (4, 8, 16, 32), "strides": (2, 2, 2)}, [(4, 2), (8, 4), (16, 8), (32, 8)]),
    "basicunet": ({"features": (4, 4, 8, 8, 16, 4)}, [(4, 1), (4, 2), (8, 4), (8, 8), (16, 16)]),
    "segresnet": ({"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1), "dropout_prob": 0.1},
                  [(8, 1), (16, 2), (32, 4)]),
}


def _build(name: str, dims: int, seed: int = 0) -> SegmentationStudent:
    torch.manual_seed(seed)
    return SegmentationStudent(name, num_classes=3, spatial_dims=dims, in_channels=1, **TINY[name][0])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_from_each_level_is_forward_features(name, dims):
    """With the student's own maps, forward_from(i, maps) is the network's forward for every i (a wrong skip, level
    or decoder order breaks it), the levels have the documented shapes, and no map is changed in place."""
    model = _build(name, dims).eval()
    x = torch.rand(2, 1, *(32,) * dims, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.forward_features(x)
        maps = model.forward_stages(x)
        kept = [m.clone() for m in maps]
        for i in range(len(maps)):
            assert torch.equal(model.forward_from(i, maps[: i + 1]), z), f"level {i}"
            assert torch.equal(model.forward_from(i, maps), z)  # deeper entries are not used
    assert all(torch.equal(a, b) for a, b in zip(maps, kept))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, *(32 // d,) * dims) for c, d in TINY[name][1]]
    assert model.stage_shapes((32,) * dims) == [tuple(m.shape[1:]) for m in maps]
    assert len(model.stage_names) == len(maps)


@pytest.mark.parametrize("name", sorted(TINY))
def test_skips_come_from_the_given_maps_and_gradients_stop_at_the_cut(name, assert_gradients_stop_at_stage):
    """Changing a given map of a level <= i changes the output (its skip is used); a loss on forward_from(i, maps)
    reaches every given map and the encoder of the deeper levels, and never the encoder of levels <= i."""
    model = _build(name, 2).train()
    maps = model.forward_stages(torch.rand(2, 1, 32, 32))
    n = len(maps)
    for i in range(n):
        model.zero_grad(set_to_none=True)
        given = [m.detach().requires_grad_(True) for m in maps[: i + 1]]
        model.classify(model.forward_from(i, given)).square().mean().backward()
        assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in given), f"a skip of level <= {i} unused"
        assert_gradients_stop_at_stage(model, i, n)


def test_unet_is_read_level_by_level_without_new_modules():
    """MONAI's recursive UNet: the levels are the down layers and the bottom, named by their paths; a bare UNet
    module works too; the student's keys and random numbers are those of the plain network."""
    model = _build("unet", 2)
    assert model.stage_names == ("0.model.0", "0.model.1.submodule.0", "0.model.1.submodule.1.submodule.0",
                                 "0.model.1.submodule.1.submodule.1.submodule")
    levels = [model.backbone.get_submodule(n) for n in model.stage_names]
    assert [model.stage_modules(k)[0] for k in range(4)] == levels
    bare = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    wrapped = SegmentationStudent(bare, 3, spatial_dims=2, feature_channels=3).eval()
    x = torch.rand(1, 1, 16, 16)
    maps = wrapped.forward_stages(x)
    assert all(torch.equal(wrapped.forward_from(i, maps), bare(x)) for i in range(3))

    torch.manual_seed(0)
    student = SegmentationStudent("basicunet", 3, spatial_dims=2, features=(4, 4, 8, 8, 16, 4))
    rng_student = torch.rand(3)
    torch.manual_seed(0)
    reference = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4))
    assert torch.equal(torch.rand(3), rng_student)
    keys = list(student.state_dict())
    student.forward_from(2, student.forward_stages(torch.rand(1, 1, 32, 32)))
    assert list(student.state_dict()) == keys
    ref = list(reference.state_dict())
    expected = [f"backbone.{k}" if not k.startswith("final_conv.") else f"head.{k[len('final_conv.'):]}" for k in ref]
    assert sorted(keys) == sorted(expected)


def test_errors_name_what_to_pass():
    """forward_from needs a list (not one tensor) of at least i + 1 maps; a custom module has no levels."""
    model = _build("basicunet", 2)
    maps = model.forward_stages(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"needs a list of the maps of levels 0\.\.2; got a tensor"):
        model.forward_from(2, maps[2])
    with pytest.raises(ValueError, match=r"got 2 maps"):
        model.forward_from(2, maps[:2])
    with pytest.raises(IndexError, match="out of range"):
        model.forward_from(5, maps)
    custom = SegmentationStudent(nn.Conv2d(1, 4, 3, padding=1), 2, spatial_dims=2, feature_channels=4)
    with pytest.raises(ValueError, match=r"cannot cut a Conv2d .*UNet, BasicUNet and SegResNet"):
        _ = custom.stage_names
