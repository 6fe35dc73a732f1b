import pytest
import torch

from monai_rd.networks import ReprogrammingNet


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_map_to_vector_2d(block):
    phi = ReprogrammingNet(12, 16, num_blocks=2, block=block)
    z = phi(torch.randn(3, 12, 5, 5))
    assert z.shape == (3, 16)
    z.sum().backward()
    assert all(p.grad is not None for p in phi.parameters() if p.requires_grad)


def test_3d_and_vector_inputs():
    assert ReprogrammingNet(6, 8, spatial_dims=3)(torch.randn(2, 6, 3, 3, 3)).shape == (2, 8)
    assert ReprogrammingNet(10, 8, vector_input=True)(torch.randn(4, 10)).shape == (4, 8)


def test_bottleneck_is_leaner_than_basic():
    basic = sum(p.numel() for p in ReprogrammingNet(64, 64, block="basic").parameters())
    lean = sum(p.numel() for p in ReprogrammingNet(64, 64, block="bottleneck").parameters())
    assert lean * 4 < basic


def test_hidden_width_maps_to_out_features_and_is_cheaper():
    lean = ReprogrammingNet(256, 128, block="bottleneck", hidden_channels=32)
    assert lean(torch.randn(2, 256, 4, 4)).shape == (2, 128)
    assert isinstance(lean.pool[-1], torch.nn.Linear) and lean.pool[-1].in_features == 32
    full = ReprogrammingNet(256, 128, block="bottleneck")
    assert sum(p.numel() for p in lean.parameters()) < sum(p.numel() for p in full.parameters()) / 2


def test_wrong_shape_names_expected():
    phi = ReprogrammingNet(12, 16)
    with pytest.raises(ValueError, match=r"\(B, 12"):
        phi(torch.randn(2, 11, 4, 4))
    with pytest.raises(ValueError, match="block"):
        ReprogrammingNet(12, 16, block="dense")
    with pytest.raises(ValueError, match="divisible by 4"):
        ReprogrammingNet(12, 16, block="bottleneck", hidden_channels=18)
    with pytest.raises(ValueError, match="divisible by 4"):
        ReprogrammingNet(12, 18, block="bottleneck")


@pytest.mark.parametrize(
    "dims, teacher_size, student_size",
    [(2, (3, 4), (16, 20)), (3, (2, 3, 2), (16, 12, 8))],
)
def test_dense_map_is_resampled_to_the_student_feature_size(dims, teacher_size, student_size):
    phi = ReprogrammingNet(12, 8, spatial_dims=dims, dense=True, hidden_channels=16)
    x = torch.randn(2, 12, *teacher_size, requires_grad=True)
    out = phi(x, spatial_size=student_size)
    assert out.shape == (2, 8, *student_size)
    assert phi(x).shape == (2, 8, *teacher_size)  # no size: the teacher's grid
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.parameters())
    assert x.grad is not None  # differentiable end to end (the trainer feeds no-grad features)


def test_dense_resampling_is_linear_interpolation_of_the_coarse_map():
    # the 1x1 output conv runs before the resampling; since they commute, the result equals interpolating the
    # full-width map and projecting it afterwards (what a naive "upsample then project" Phi would compute)
    torch.manual_seed(0)
    phi = ReprogrammingNet(6, 4, spatial_dims=3, dense=True, hidden_channels=8).eval()
    x = torch.randn(1, 6, 2, 3, 2)
    coarse = phi.blocks(phi.proj(x))
    up = torch.nn.functional.interpolate(coarse, size=(6, 9, 4), mode="trilinear", align_corners=False)
    assert torch.allclose(phi(x, (6, 9, 4)), phi.out(up), atol=1e-5)


def test_pooled_mode_is_unchanged_by_the_dense_option():
    torch.manual_seed(1)
    pooled = ReprogrammingNet(12, 16, hidden_channels=8)
    torch.manual_seed(1)
    dense = ReprogrammingNet(12, 16, hidden_channels=8, dense=True)
    # same projection and blocks, so the dense map pooled over space matches the pooled vector before its Linear
    x = torch.randn(2, 12, 5, 5)
    pooled.eval(), dense.eval()
    assert torch.allclose(dense.blocks(dense.proj(x)).mean((2, 3)), pooled.pool[:2](pooled.blocks(pooled.proj(x))))
    assert [n for n, _ in pooled.named_parameters() if n.startswith("pool")] == ["pool.2.weight", "pool.2.bias"]
    with pytest.raises(ValueError, match="dense=True"):
        pooled(x, spatial_size=(8, 8))


def test_dense_errors_name_the_problem():
    with pytest.raises(ValueError, match="map features"):
        ReprogrammingNet(12, 8, vector_input=True, dense=True)
    phi = ReprogrammingNet(12, 8, spatial_dims=3, dense=True)
    with pytest.raises(ValueError, match="spatial_dims=3"):
        phi(torch.randn(1, 12, 2, 2, 2), spatial_size=(8, 8))
    with pytest.raises(ValueError, match=r"\(B, 12, \*, \*, \*\)"):
        phi(torch.randn(1, 12, 2, 2))
