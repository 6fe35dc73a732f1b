import numpy as np
import pytest
import torch

from monai_rd.losses import DecoupledKDLoss, DistillKLLoss, DISTLoss, standardise_logits


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


LOGIT_LOSSES = {
    "kd": DistillKLLoss,
    "kd_multi_label": lambda **kw: DistillKLLoss(multi_label=True, **kw),
    "kd_logit_standardised": lambda **kw: DistillKLLoss(logit_standardise=True, **kw),
    "dkd": DecoupledKDLoss,
    "dkd_logit_standardised": lambda **kw: DecoupledKDLoss(logit_standardise=True, **kw),
    "dist": DISTLoss,
    "dist_multi_label": lambda **kw: DISTLoss(multi_label=True, **kw),
}


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@pytest.mark.parametrize("detach", [True, False])
def test_the_gradient_reaches_the_student_and_the_teacher_only_when_asked(name, detach):
    """Every logit-distillation loss: catches a teacher side left attached (e.g. the z-score's statistics or DKD's
    target built from an attached tensor) and a student cut off from the graph."""
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    LOGIT_LOSSES[name](detach_teacher=detach)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert (t.grad is None) == detach


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        DistillKLLoss(tau=0)
    with pytest.raises(ValueError, match="differ"):
        DistillKLLoss()(torch.randn(2, 3), torch.randn(2, 4))


# --- logit standardisation (Sun et al., CVPR 2024) ---


def _zscore(z):
    # population standard deviation (ddof=0), per sample over the classes
    return (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)


@pytest.mark.parametrize("b, c, tau", [(6, 4, 2.0), (3, 10, 1.0), (8, 2, 4.0)])
def test_logit_standardised_kd_matches_numpy(b, c, tau):
    """Catches standardising over the batch instead of the classes, the unbiased (C - 1) standard deviation
    (a sqrt(C / (C - 1)) change of temperature, large for C = 2), the temperature applied before the z-score, or
    a missing tau^2."""
    rng = np.random.default_rng(b * c)
    s, t = rng.normal(size=(b, c)) * 3 + 1, rng.normal(size=(b, c)) * 5 - 2
    p, q = _softmax(_zscore(t) / tau), _softmax(_zscore(s) / tau)
    expected = tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = DistillKLLoss(tau=tau, logit_standardise=True)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_logit_standardised_kd_ignores_each_sample_s_logit_shift_and_scale():
    """Catches the option having no effect (plain KD changes with the teacher's scale, checked below) and a
    z-score over the batch (one sample's own scale and shift would then change the others' logits)."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    scale = torch.rand(5, 1, generator=g) * 4 + 0.25  # a different positive scale and shift for every sample
    shift = torch.randn(5, 1, generator=g) * 10
    ls = DistillKLLoss(tau=2.0, logit_standardise=True)
    ref = ls(s, t).item()
    assert ls(s, t * scale + shift).item() == pytest.approx(ref, rel=1e-5)
    assert ls(s * scale - shift, t).item() == pytest.approx(ref, rel=1e-5)
    plain = DistillKLLoss(tau=2.0)
    assert plain(s, t * scale + shift).item() != pytest.approx(plain(s, t).item(), rel=1e-3)


def test_standardised_logits_have_zero_mean_and_unit_population_std():
    """Catches torch.std's unbiased divisor (std sqrt(C/(C-1)) after the division) and a wrong dim."""
    z = torch.randn(4, 3) * 7 + 3
    out = standardise_logits(z)
    assert torch.allclose(out.mean(1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(out.pow(2).mean(1), torch.ones(4), atol=1e-5)
    assert torch.equal(standardise_logits(torch.full((2, 5), 3.0)), torch.zeros(2, 5))  # constant row: no NaN


def test_logit_standardise_refuses_multi_label():
    with pytest.raises(ValueError, match="multi-label"):
        DistillKLLoss(multi_label=True, logit_standardise=True)
