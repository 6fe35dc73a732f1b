import pytest
import torch
from monai.data import MetaTensor

from monai_rd.transforms import ToGrayscale, ToGrayscaled


def test_rgb_to_luma_and_gray_passthrough():
    rgb = torch.zeros(3, 2, 2)
    rgb[1] = 1.0
    assert torch.allclose(ToGrayscale()(rgb), torch.full((1, 2, 2), 0.587))
    g = torch.rand(1, 4, 4)
    assert torch.equal(ToGrayscale()(g), g)
    assert ToGrayscale()(torch.rand(4, 3, 3)).shape == (1, 3, 3)


def test_bad_channel_count_names_file():
    img = MetaTensor(torch.rand(2, 4, 4), meta={"filename_or_obj": "/data/case7.png"})
    with pytest.raises(ValueError, match="case7.png"):
        ToGrayscaled("image")({"image": img})
