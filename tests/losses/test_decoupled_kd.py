import numpy as np
import pytest
import torch

from monai_rd.data.unlabelled import UNLABELLED
from monai_rd.losses import DecoupledKDLoss, DistillKLLoss


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def _dkd_rows(s, t, target, tau):
    """TCKD and NCKD per row from the paper's definitions: probabilities first, then the binary and renormalised
    non-target distributions."""
    p_s, p_t = _softmax(s / tau), _softmax(t / tau)
    rows = np.arange(len(target))
    b_s = np.stack([p_s[rows, target], 1 - p_s[rows, target]], 1)
    b_t = np.stack([p_t[rows, target], 1 - p_t[rows, target]], 1)
    keep = np.ones_like(p_s, dtype=bool)
    keep[rows, target] = False
    n_s = p_s[keep].reshape(len(target), -1)
    n_t = p_t[keep].reshape(len(target), -1)
    n_s, n_t = n_s / n_s.sum(1, keepdims=True), n_t / n_t.sum(1, keepdims=True)
    return tau**2 * _kl(b_t, b_s), tau**2 * _kl(n_t, n_s)


def _binary_kl(s, t, tau):
    p, q = 1 / (1 + np.exp(-t / tau)), 1 / (1 + np.exp(-s / tau))
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


@pytest.mark.parametrize(
    "b, c, tau, alpha, beta", [(6, 5, 4.0, 1.0, 8.0), (4, 10, 1.0, 0.5, 2.0), (7, 3, 2.0, 2.0, 0.5)]
)
def test_matches_numpy_reference(b, c, tau, alpha, beta):
    """Catches TCKD and NCKD swapped (alpha != beta), NCKD over all classes or not renormalised, a missing tau^2,
    the target class taken from the student, and sum instead of mean over the batch."""
    rng = np.random.default_rng(c)
    s, t = rng.normal(size=(b, c)) * 3, rng.normal(size=(b, c)) * 3
    y = rng.integers(0, c, size=b)
    tckd, nckd = _dkd_rows(s, t, y, tau)
    expected = alpha * tckd.mean() + beta * nckd.mean()
    got = DecoupledKDLoss(alpha=alpha, beta=beta, tau=tau)(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_parts_recombine_into_hinton_kd():
    """KL = TCKD + (1 - p_T[t]) NCKD row by row (the paper's eq. 1). Catches either part mis-scaled or mis-signed
    even when the numpy reference shared the bug."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 7, generator=g) * 2, torch.randn(6, 7, generator=g) * 2
    y = torch.randint(0, 7, (6,), generator=g)
    tau = 3.0
    tckd, nckd = DecoupledKDLoss(tau=tau).decoupled(s, t, y)
    p_t = torch.softmax(t / tau, 1).gather(1, y[:, None])[:, 0]
    kd = DistillKLLoss(tau=tau)(s, t)
    assert (tckd + (1 - p_t) * nckd).mean().item() == pytest.approx(kd.item(), rel=1e-5)


def test_is_stable_for_confident_logits():
    """Catches the masked-probability route (log of a sum that underflows to 0): logits 200 apart give inf/NaN."""
    s = torch.tensor([[200.0, 0.0, -5.0], [0.0, -200.0, 3.0]], requires_grad=True)
    t = torch.tensor([[150.0, 1.0, -2.0], [1.0, -150.0, 4.0]])
    loss = DecoupledKDLoss(tau=1.0)(s, t, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_unlabelled_rows_take_the_teacher_top_class():
    """Catches label -1 read as the last class (Python indexing), unlabelled rows dropped from the loss, or the
    student's top class used instead of the teacher's."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    y[[1, 4]] = UNLABELLED
    filled = torch.where(y == UNLABELLED, t.argmax(1), y)
    assert not torch.equal(filled[[1, 4]], torch.tensor([4, 4]))  # the data tells the two readings apart
    assert not torch.equal(filled[[1, 4]], s.argmax(1)[[1, 4]])
    tckd, nckd = _dkd_rows(s.double().numpy(), t.double().numpy(), filled.numpy(), 4.0)
    got = DecoupledKDLoss()(s, t, y)
    assert got.item() == pytest.approx(tckd.mean() + 8.0 * nckd.mean(), rel=1e-5)
    assert DecoupledKDLoss()(s, t).item() == pytest.approx(DecoupledKDLoss()(s, t, t.argmax(1)).item(), rel=1e-6)


def test_a_batch_of_unlabelled_images_still_trains_the_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3)
    loss = DecoupledKDLoss()(s, t, torch.full((4, 1), UNLABELLED))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and s.grad.abs().sum() > 0


@pytest.mark.parametrize("c", [1, 14])
def test_multi_label_is_alpha_times_binary_kd(c):
    """Per-class binary distributions have no non-target part: DKD = warmup * alpha * binary KD, labels unused.
    Catches beta leaking in, a sum over the classes (14x here) or labels (-1 rows) used."""
    rng = np.random.default_rng(c)
    s, t = rng.normal(size=(5, c)) * 2, rng.normal(size=(5, c)) * 2
    y = (rng.random((5, c)) > 0.5).astype(np.float64)
    y[2] = UNLABELLED
    loss = DecoupledKDLoss(alpha=0.7, beta=8.0, tau=2.0, warmup_factor=0.5, multi_label=True)
    got = loss(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    expected = 0.5 * 0.7 * 4.0 * _binary_kl(s, t, 2.0).mean()
    assert got.item() == pytest.approx(expected, rel=1e-5)
    kd = DistillKLLoss(tau=2.0, multi_label=True)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(0.35 * kd.item(), rel=1e-6)


def test_two_classes_leave_no_non_target_knowledge():
    """With C = 2 NCKD is a KL over one outcome (0), so DKD = alpha * KD. Catches a non-zero NCKD for C = 2."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 2, generator=g) * 2, torch.randn(6, 2, generator=g) * 2
    y = torch.randint(0, 2, (6,), generator=g)
    _, nckd = DecoupledKDLoss().decoupled(s, t, y)
    assert torch.equal(nckd, torch.zeros(6))
    got = DecoupledKDLoss(alpha=1.5, beta=8.0, tau=4.0)(s, t, y)
    assert got.item() == pytest.approx(1.5 * DistillKLLoss(tau=4.0)(s, t).item(), rel=1e-5)


def test_logit_standardise_is_dkd_on_z_scored_logits():
    """Catches the option ignored, applied after the temperature, or only on one side."""
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(6, 5)) * 3 + 1, rng.normal(size=(6, 5)) * 6
    y = rng.integers(0, 5, size=6)

    def z(x):
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    tckd, nckd = _dkd_rows(z(s), z(t), y, 2.0)
    loss = DecoupledKDLoss(alpha=9.0, beta=72.0, tau=2.0, logit_standardise=True)
    got = loss(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert got.item() == pytest.approx(9.0 * tckd.mean() + 72.0 * nckd.mean(), rel=1e-5)
    scaled = loss(torch.tensor(s), torch.tensor(t) * 0.3 + 5, torch.tensor(y))  # the teacher's scale is gone
    assert scaled.item() == pytest.approx(got.item(), rel=1e-5)


def test_warmup_factor_is_a_live_attribute():
    """Catches the factor read once at construction (a scheduler's updates then do nothing)."""
    g = torch.Generator().manual_seed(6)
    s, t, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    loss = DecoupledKDLoss()
    full = loss(s, t, y).item()
    loss.warmup_factor = 0.25
    assert loss(s, t, y).item() == pytest.approx(0.25 * full, rel=1e-6)
    loss.warmup_factor = 0.0
    assert loss(s, t, y).item() == 0.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="warmup_factor"):
        DecoupledKDLoss(warmup_factor=20)
    with pytest.raises(ValueError, match="multi-label"):
        DecoupledKDLoss(multi_label=True, logit_standardise=True)
    with pytest.raises(ValueError, match="class indices"):
        DecoupledKDLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="C >= 2"):
        DecoupledKDLoss()(torch.randn(4, 1), torch.randn(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="differ"):
        DecoupledKDLoss()(torch.randn(4, 3), torch.randn(4, 5), torch.zeros(4))
