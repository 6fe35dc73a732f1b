import numpy as np
import pytest
import torch

from monai_rd.losses import FitNetsLoss


def test_matches_numpy_regressor_and_area_pooled_teacher():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 4, 2, 2))
    t = rng.normal(size=(3, 6, 4, 4))
    loss = FitNetsLoss(student_channels=4, teacher_channels=6).double()
    w = loss.regressor.weight.detach().numpy()[:, :, 0, 0]  # (6, 4)
    b = loss.regressor.bias.detach().numpy()
    hint = np.einsum("oc,bchw->bohw", w, s) + b[None, :, None, None]
    t_pooled = t.reshape(3, 6, 2, 2, 2, 2).mean(axis=(3, 5))  # 4x4 -> 2x2 by 2x2 block means
    expected = np.mean((hint - t_pooled) ** 2)
    got = loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_reaches_student_and_regressor_never_teacher():
    loss = FitNetsLoss(4, 6)
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 6, 3, 3, requires_grad=True)
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.regressor.weight.grad.abs().sum() > 0
    assert t.grad is None


def test_zero_when_the_projection_reproduces_the_teacher():
    loss = FitNetsLoss(3, 3)
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.eye(3)[:, :, None, None])
        loss.regressor.bias.zero_()
    x = torch.randn(2, 3, 2, 2)
    assert loss(x, x).item() == 0.0


def test_vector_teacher_is_refused_with_advice():
    with pytest.raises(ValueError, match="cannot be used with it"):
        FitNetsLoss(4, 6)(torch.randn(2, 4, 2, 2), torch.randn(2, 6))
    with pytest.raises(ValueError, match="batch sizes 2 .* and 3"):
        FitNetsLoss(4, 6)(torch.randn(2, 4, 2, 2), torch.randn(3, 6, 2, 2))
