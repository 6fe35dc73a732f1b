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


def _binary_kl(s, t, tau):
    p, q = 1 / (1 + np.exp(-t / tau)), 1 / (1 + np.exp(-s / tau))
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))  # (B, C)


def test_multi_label_is_the_per_class_mean_of_the_binary_kl():
    # 14 classes as in ChestX-ray14: a sum over classes would be 14x this reference
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 14)) * 3, rng.normal(size=(5, 14)) * 3
    tau = 2.0
    expected = tau**2 * _binary_kl(s, t, tau).mean()
    got = DistillKLLoss(tau=tau, multi_label=True)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_multi_label_does_not_grow_with_the_number_of_classes():
    # repeating every class 14 times leaves BCE unchanged; KD must stay unchanged too, like the task loss
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = (torch.rand(4, 3, generator=g) > 0.5).float()
    kd = DistillKLLoss(multi_label=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert kd(s.repeat(1, 14), t.repeat(1, 14)).item() == pytest.approx(kd(s, t).item(), rel=1e-5)
    assert bce(s.repeat(1, 14), y.repeat(1, 14)).item() == pytest.approx(bce(s, y).item(), rel=1e-5)


def test_one_sigmoid_output_equals_two_class_softmax_kd():
    # sigmoid(z) = softmax((0, z))[1]: with C = 1 the per-class mean is the single-label loss on (0, z)
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 1, generator=g) * 2, torch.randn(6, 1, generator=g) * 2
    got = DistillKLLoss(tau=3.0, multi_label=True)(s, t)
    two_class = DistillKLLoss(tau=3.0)(torch.cat([torch.zeros_like(s), s], 1), torch.cat([torch.zeros_like(t), t], 1))
    assert got.item() == pytest.approx(two_class.item(), rel=1e-5)


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
