import numpy as np
import pytest
import torch

from monai_rd.losses import AttentionTransferLoss, attention_map


def _at(x):
    a = (x**2).mean(1).reshape(x.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_matches_the_authors_formula_on_equal_grids():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=(3, 7, 3, 3))
    expected = np.mean((_at(s) - _at(t)) ** 2)
    assert AttentionTransferLoss()(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-5)


def test_teacher_attention_is_area_pooled_to_the_students_grid_before_normalising():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 4, 2, 2)), rng.normal(size=(2, 5, 4, 4))
    a_t = (t**2).mean(1).reshape(2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(2, -1)
    a_t = a_t / np.linalg.norm(a_t, axis=1, keepdims=True)
    expected = np.mean((_at(s) - a_t) ** 2)
    assert AttentionTransferLoss()(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-5)


def test_attention_map_is_the_channel_mean_of_the_powered_magnitude():
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(attention_map(x, p=2), torch.tensor([[[5.0, 2.0]]]))
    torch.testing.assert_close(attention_map(x, p=1), torch.tensor([[[2.0, 1.0]]]))


def test_invariant_to_feature_scale_and_teacher_gets_no_gradient():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 6, 3, 3, requires_grad=True)
    loss = AttentionTransferLoss()
    value = loss(s, t)
    assert loss(s * 10, t * 0.1).item() == pytest.approx(value.item(), rel=1e-5)
    value.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_refuses_vectors_and_bad_p():
    with pytest.raises(ValueError, match="feature maps"):
        AttentionTransferLoss()(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="p must be positive"):
        AttentionTransferLoss(p=0)
