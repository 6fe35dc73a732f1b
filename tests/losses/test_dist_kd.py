import numpy as np
import pytest
import torch

from monai_rd.losses import DISTLoss


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _mean_corr(a, b):
    """Mean Pearson correlation of matching rows, from numpy's corrcoef."""
    return np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])


def _dist(y_s, y_t, beta, gamma, tau):
    inter = 1 - _mean_corr(y_s, y_t)
    intra = 1 - _mean_corr(y_s.T, y_t.T)
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(
    "b, c, tau, beta, gamma", [(8, 5, 1.0, 1.0, 1.0), (4, 10, 4.0, 2.0, 0.5), (16, 3, 2.0, 0.3, 3.0)]
)
def test_matches_numpy_reference(b, c, tau, beta, gamma):
    """Catches the inter- and intra-class terms swapped (beta != gamma), the correlation taken over the wrong axis,
    cosine instead of Pearson (uncentred), logits instead of probabilities, and a missing tau^2."""
    rng = np.random.default_rng(b + c)
    s, t = rng.normal(size=(b, c)) * 3, rng.normal(size=(b, c)) * 3
    expected = _dist(_softmax(s / tau), _softmax(t / tau), beta, gamma, tau)
    got = DISTLoss(beta=beta, gamma=gamma, tau=tau)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("c", [2, 14])
def test_multi_label_correlates_sigmoid_probabilities(c):
    """Catches a softmax over independent findings (one probability mass shared by all of them)."""
    rng = np.random.default_rng(c)
    s, t = rng.normal(size=(6, c)) * 2, rng.normal(size=(6, c)) * 2
    expected = _dist(1 / (1 + np.exp(-s / 2.0)), 1 / (1 + np.exp(-t / 2.0)), 1.0, 1.0, 2.0)
    got = DISTLoss(tau=2.0, multi_label=True)(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_relations_are_zero_for_the_teacher_itself_and_positive_otherwise():
    z = torch.randn(6, 4)
    inter, intra = DISTLoss().relations(z, z.clone())
    assert inter.item() == pytest.approx(0.0, abs=1e-6) and intra.item() == pytest.approx(0.0, abs=1e-6)
    assert DISTLoss()(z, z.flip(1)).item() > 0


def test_degenerate_batches_stay_finite():
    """A batch of one (no spread across the batch) and two classes (inter-class correlation ±1) give no NaN;
    catches a correlation without the denominator's floor."""
    s = torch.randn(1, 4, requires_grad=True)
    loss = DISTLoss()(s, torch.randn(1, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert torch.isfinite(DISTLoss()(torch.randn(5, 2), torch.randn(5, 2)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="tau"):
        DISTLoss(tau=0)
    with pytest.raises(ValueError, match="voxel rows"):
        DISTLoss()(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        DISTLoss()(torch.randn(2, 3), torch.randn(2, 4))
