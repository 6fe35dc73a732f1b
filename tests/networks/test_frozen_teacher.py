import pytest
import torch
import torch.nn as nn

from monai_rd.networks import FrozenTeacher, tokens_to_map


def _tiny_teacher(**kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))
    return FrozenTeacher(model, input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **kwargs)


def test_frozen_in_train_mode_and_no_grad():
    t = _tiny_teacher()
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert t.training and not t.model.training
    x = torch.rand(2, 1, 20, 20, requires_grad=True)
    out = t(x)
    assert not out.requires_grad
    # eval mode: dropout is off and BN uses running stats, so repeated calls agree
    assert torch.equal(out, t(x))
    assert out.shape == (2, 8, 16, 16)


def test_preprocessing_repeats_resizes_and_normalises():
    t = _tiny_teacher()
    x = torch.full((1, 1, 10, 10), 0.75)
    p = t.preprocess(x)
    assert p.shape == (1, 3, 32, 32)
    assert torch.allclose(p, torch.ones_like(p))  # (0.75 - 0.5) / 0.25
    with pytest.raises(ValueError, match="channels"):
        t.preprocess(torch.rand(1, 2, 8, 8))
    # a 3D input size for 2D images (e.g. --teacher_input_size [160,384,32]) is named, not a torch interpolate error
    with pytest.raises(ValueError, match=r"input_size \(32, 32\) \(2 spatial dims\).*teacher_input_size"):
        t.preprocess(torch.rand(1, 1, 8, 8, 8))


def test_token_outputs_become_maps():
    class Tokens(nn.Module):
        def forward(self, x):
            b = x.shape[0]
            return torch.arange(b * 5 * 4, dtype=torch.float32).reshape(b, 5, 4)  # 1 cls + 2x2 patches

    t = FrozenTeacher(Tokens(), input_size=None, num_prefix_tokens=1)
    out = t(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 4, 2, 2)
    tokens = Tokens()(torch.rand(2, 3, 8, 8))
    assert torch.equal(out[0, :, 0, 1], tokens[0, 2])
    with pytest.raises(ValueError, match="square"):
        tokens_to_map(torch.rand(1, 6, 4))


def test_out_channels_and_fingerprint_track_weights():
    t = _tiny_teacher()
    assert t.out_channels == 8
    fp = t.fingerprint()
    assert fp == _tiny_teacher().fingerprint()
    with torch.no_grad():
        t.model[0].weight[0, 0, 0, 0] += 1e-3
    assert t.fingerprint() != fp
    assert _tiny_teacher(name="other").fingerprint() != fp


def test_mean_std_length_checked():
    with pytest.raises(ValueError, match="in_channels"):
        FrozenTeacher(nn.Identity(), mean=(0.5,), std=(0.5,), in_channels=3)
