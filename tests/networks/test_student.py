import pytest
import torch
import torch.nn as nn

from monai_rd.networks import StudentClassifier, create_backbone


@pytest.mark.parametrize("name,features", [("resnet18", 512), ("mobilenetv2", 1280), ("shufflenetv2", 1024)])
def test_paper_students_by_name_script_and_match(name, features):
    torch.manual_seed(0)
    m = StudentClassifier(name, num_classes=4, in_channels=1).eval()
    x = torch.rand(2, 1, 32, 32)
    z = m.forward_features(x)
    assert z.shape == (2, features) and m.num_features == features
    logits = m(x)
    assert logits.shape == (2, 4)
    assert torch.allclose(m.classify(z), logits)
    scripted = torch.jit.script(m)
    assert torch.allclose(scripted(x), logits, atol=1e-5)


def test_gray_adaptation_sums_rgb_weights():
    torch.manual_seed(0)
    rgb, _ = create_backbone("resnet18")
    torch.manual_seed(0)
    gray, _ = create_backbone("resnet18", in_channels=1)
    assert torch.allclose(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(1, 1, 32, 32)
    rgb.eval(), gray.eval()
    assert torch.allclose(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4)


def test_timm_monai_and_module_backbones():
    assert StudentClassifier("timm:resnet10t", 3, in_channels=1).eval()(torch.rand(1, 1, 32, 32)).shape == (1, 3)
    m3d = StudentClassifier("monai:resnet10", 2, in_channels=1, spatial_dims=3).eval()
    assert m3d(torch.rand(1, 1, 16, 16, 16)).shape == (1, 2)
    custom = StudentClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 7)), 2, num_features=7)
    assert custom(torch.rand(3, 4)).shape == (3, 2)


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="unknown student"):
        StudentClassifier("resnet19", 2)
    with pytest.raises(ValueError, match="num_features"):
        StudentClassifier(nn.Identity(), 2)


@pytest.mark.parametrize(
    "name, features", [("monai:resnet10", 512), ("monai:resnet18", 512), ("monai:densenet121", 1024)]
)
def test_3d_classification_students_by_name(name, features):
    torch.manual_seed(0)
    m = StudentClassifier(name, num_classes=3, in_channels=1, spatial_dims=3).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    z = m.forward_features(x)
    assert z.shape == (2, features) and m.num_features == features  # pooled: the classifier was removed
    assert torch.allclose(m.classify(z), m(x))


def test_3d_densenet_kwargs_reach_monai_and_script():
    torch.manual_seed(0)
    m = StudentClassifier(
        "monai:densenet121", 2, in_channels=1, spatial_dims=3, init_features=8, growth_rate=4, block_config=(2, 2)
    ).eval()
    # 8 + 2*4 = 16 -> transition 8 -> 8 + 2*4 = 16 pooled features
    assert m.num_features == 16
    x = torch.rand(1, 1, 16, 16, 16)
    assert torch.allclose(torch.jit.script(m)(x), m(x), atol=1e-5)
    with pytest.raises(ValueError, match="densenet121"):
        StudentClassifier("monai:vit", 2, spatial_dims=3)
