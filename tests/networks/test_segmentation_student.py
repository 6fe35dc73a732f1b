import pytest
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from monai_rd.networks import SegmentationStudent, list_segmentation_students

TINY = {
    "unet": ({"channels": (4, 8), "strides": (2,)}, 4, 16),
    "basicunet": ({"features": (4, 4, 8, 8, 16, 4)}, 4, 32),
    "segresnet": ({"init_filters": 8, "blocks_down": (1, 1), "blocks_up": (1,)}, 8, 16),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_features_head_and_forward(name, dims):
    kwargs, width, size = TINY[name]
    torch.manual_seed(0)
    net = SegmentationStudent(name, num_classes=3, spatial_dims=dims, in_channels=1, **kwargs).eval()
    x = torch.rand(2, 1, *(size,) * dims)
    feats = net.forward_features(x)
    # the last decoder map at the input's resolution, and the head is the only projection to classes
    assert feats.shape == (2, width, *(size,) * dims) and net.feature_channels == width
    assert isinstance(net.head, nn.modules.conv._ConvNd) and net.head.kernel_size == (1,) * dims
    assert net.head.in_channels == width and net.head.out_channels == 3
    assert torch.allclose(net.classify(feats), net(x))
    assert not any(n.startswith("backbone.") and "head" in n for n, _ in net.named_parameters())


@pytest.mark.parametrize("name", sorted(TINY))
def test_deployed_model_scripts_and_runs_in_a_sliding_window(name):
    kwargs, _, size = TINY[name]
    torch.manual_seed(0)
    net = SegmentationStudent(name, num_classes=2, spatial_dims=3, **kwargs).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, size + 4, size, size)
    with torch.no_grad():
        eager = sliding_window_inference(x, (size,) * 3, 2, net, overlap=0.25)
        exported = sliding_window_inference(x, (size,) * 3, 2, scripted, overlap=0.25)
    assert eager.shape == (1, 2, size + 4, size, size)
    assert torch.allclose(eager, exported, atol=1e-5)


def test_basicunet_head_is_its_own_final_conv():
    # a trained BasicUNet checkpoint keeps its meaning: features + head compute exactly BasicUNet's forward
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    ref = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)).eval()
    torch.manual_seed(0)
    net = SegmentationStudent("basicunet", 3, spatial_dims=2, features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(net(x), ref(x), atol=1e-6)


def test_module_backbone_and_errors():
    net = SegmentationStudent(nn.Conv3d(1, 5, 3, padding=1), num_classes=2, spatial_dims=3, feature_channels=5)
    assert net(torch.rand(1, 1, 6, 6, 6)).shape == (1, 2, 6, 6, 6)
    with pytest.raises(ValueError, match="feature_channels"):
        SegmentationStudent(nn.Identity(), 2)
    with pytest.raises(ValueError, match=r"unknown segmentation student 'vnet'.*basicunet"):
        SegmentationStudent("vnet", 2)
    with pytest.raises(ValueError, match="use_conv_final"):
        SegmentationStudent("segresnet", 2, use_conv_final=False)
    with pytest.raises(ValueError, match="features\\[-1\\]"):
        SegmentationStudent("basicunet", 2, feature_channels=8)
    assert SegmentationStudent("unet", 2, channels=(4, 8), strides=(2,), feature_channels=6).feature_channels == 6
    assert list_segmentation_students() == ["basicunet", "segresnet", "unet"]
