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
