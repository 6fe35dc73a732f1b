import pytest
import torch
import torch.nn as nn

from monai_rd.networks import StudentClassifier
from monai_rd.networks.feature_map import FeatureMapHook


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "shufflenetv2"])
def test_the_map_is_what_the_student_pools_into_its_features(name):
    torch.manual_seed(0)
    student = StudentClassifier(name, num_classes=3, in_channels=1)
    hook = FeatureMapHook(student.backbone)
    z = student.forward_features(torch.rand(2, 1, 64, 64))
    fmap = hook.take()
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, student.num_features) and fmap.shape[2:] == (2, 2)
    torch.testing.assert_close(fmap.mean((2, 3)), z)
    assert fmap.requires_grad  # still in the graph, so a feature loss trains the student
    with pytest.raises(RuntimeError, match="no feature map"):
        hook.take()  # cleared: a stale map is never reused


def test_backbone_without_a_map_says_so_and_hooks_can_be_removed():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    hook = FeatureMapHook(backbone)
    backbone(torch.rand(2, 4))
    with pytest.raises(RuntimeError, match="convolutional student"):
        hook.take()
    conv = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1))
    hook = FeatureMapHook(conv)
    hook.remove()
    conv(torch.rand(1, 1, 3, 3))
    assert hook.map is None
