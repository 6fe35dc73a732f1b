"""The Deep RD stage projectors phi_i: output shapes in 2D and 3D when shrinking, growing or both, where the
resampling happens, the batch-independent norm, the builder and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_rd.networks import StageProjector, build_stage_projectors


@pytest.mark.parametrize(
    "dims, source, target",
    [
        (2, (7, 7), (2, 2)),  # EfficientNet-Lite0 /32 at 224 px -> ResNet18 /32 at 64 px
        (2, (14, 14), (16, 16)),  # growing
        (2, (7, 9), (7, 9)),  # same size
        (3, (6, 6, 3), (24, 24, 12)),  # SwinUNETR layers1 -> a full-resolution 3D level
        (3, (8, 4, 4), (2, 8, 4)),  # shrink one axis, grow another, keep the third
    ],
)
def test_output_shape_and_where_it_is_resampled(dims, source, target):
    """(B, C_T, *s_T) -> (B, C_S, *s_S); the first conv runs at the smaller of the two sizes per axis (pooling
    before it when shrinking, interpolation after it when growing) and the second at the target size."""
    torch.manual_seed(0)
    phi = StageProjector(12, 5, spatial_dims=dims, hidden_channels=6)
    sizes = {}

    def keep_size(name):
        def hook(module, args, output):
            sizes[name] = tuple(output.shape[2:])

        return hook

    phi.conv1.register_forward_hook(keep_size("conv1"))
    phi.conv2.register_forward_hook(keep_size("conv2"))
    out = phi(torch.rand(2, 12, *source), out_size=target)
    assert out.shape == (2, 5, *target)
    assert sizes == {"conv1": tuple(min(s, t) for s, t in zip(source, target)), "conv2": target}


def test_default_sizes_and_layers():
    """The target size given at construction is the default and a call's size overrides it; without either the
    input size is kept. Three layers: 3x3 conv-norm-act twice, then a bare 1x1 conv."""
    phi = StageProjector(8, 4, out_size=(3, 3))
    assert phi(torch.rand(1, 8, 6, 6)).shape == (1, 4, 3, 3)
    assert phi(torch.rand(1, 8, 6, 6), out_size=(12, 12)).shape == (1, 4, 12, 12)
    assert StageProjector(8, 4)(torch.rand(1, 8, 5, 5)).shape == (1, 4, 5, 5)
    convs = [m for m in phi.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (1, 1)] and convs[0].in_channels == 8
    assert [type(m).__name__ for m in phi.conv3.modules()] == ["Convolution", "Conv2d"]  # no norm/act at the end


def test_group_norm_works_for_a_batch_of_two_and_one_pixel_maps():
    """The default norm is independent of the batch and defined on 1 x 1 maps (the deepest stage of a small
    classification student) in training: each sample's output does not depend on the other one, and is not
    flattened to a constant (a norm over single values would give the bias alone)."""
    torch.manual_seed(0)
    phi = StageProjector(16, 8, hidden_channels=8).train()
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in phi.modules() if "Norm" in type(m).__name__)
    x = torch.rand(2, 16, 1, 1)
    out = phi(x, out_size=(1, 1))
    assert torch.allclose(phi(x[:1]), out[:1], atol=1e-6)  # no batch statistics
    assert out[0].std() > 0 and not torch.allclose(out[0], out[1])
    assert phi(torch.rand(2, 16, 4, 4, 4)[..., 0]).shape == (2, 8, 4, 4)


def test_builder_matches_stages():
    """One projector per stage, from teacher stage i to student stage i; lists of different lengths are refused."""
    phis = build_stage_projectors([24, 40, 112, 1280], [64, 128, 256, 512], spatial_dims=2)
    assert isinstance(phis, nn.ModuleList) and len(phis) == 4
    assert [(p.in_channels, p.out_channels, p.hidden_channels) for p in phis] == [
        (24, 64, 64), (40, 128, 128), (112, 256, 256), (1280, 512, 512)
    ]
    narrow = build_stage_projectors([8, 8], [4, 4], spatial_dims=3, hidden_channels=2, out_sizes=[(2, 2, 2), None])
    assert narrow[0](torch.rand(1, 8, 4, 4, 4)).shape == (1, 4, 2, 2, 2) and narrow[1].hidden_channels == 2
    with pytest.raises(ValueError, match=r"3 teacher stages, 4 student stages"):
        build_stage_projectors([8, 8, 8], [4, 4, 4, 4])


def test_shapes_are_checked():
    """A map with another channel count or rank, or a target of another length, is named rather than failing in a
    convolution."""
    phi = StageProjector(8, 4, spatial_dims=3)
    with pytest.raises(ValueError, match=r"expects \(B, 8, \*, \*, \*\), got \(1, 8, 4, 4\)"):
        phi(torch.rand(1, 8, 4, 4))
    with pytest.raises(ValueError, match="spatial_dims=3"):
        phi(torch.rand(1, 8, 4, 4, 4), out_size=(2, 2))
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        StageProjector(8, 4, spatial_dims=4)
