import numpy as np
import pytest
import torch

from monai_rd.losses import DistillKLLoss


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_matches_manual_kl():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    tau = 4.0
    p, q = _softmax(t / tau), _softmax(s / tau)
    expected = tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = DistillKLLoss(tau=tau)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_multi_label_matches_manual_binary_kl():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    tau = 2.0
    p, q = 1 / (1 + np.exp(-t / tau)), 1 / (1 + np.exp(-s / tau))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    expected = tau**2 * kl.sum(1).mean()
    got = DistillKLLoss(tau=tau, multi_label=True)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 5)
    assert DistillKLLoss()(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert DistillKLLoss()(z, z.flip(1)).item() > 0


@pytest.mark.parametrize("detach", [True, False])
def test_detach_teacher(detach):
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    DistillKLLoss(detach_teacher=detach)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert (t.grad is None) == detach


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        DistillKLLoss(tau=0)
    with pytest.raises(ValueError, match="differ"):
        DistillKLLoss()(torch.randn(2, 3), torch.randn(2, 4))
