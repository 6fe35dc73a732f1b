import numpy as np
import pytest
import torch

from monai_rd.losses import CKALoss, cka, hsic


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def numpy_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return float(
        (
            np.trace(kt @ lt)
            + one @ kt @ one * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one
        )
        / (n * (n - 3))
    )


@pytest.mark.parametrize("n,d1,d2", [(16, 8, 5), (8, 64, 32)])  # feature form (D < B) and Gram form (D > B)
def test_linear_cka_matches_numpy(n, d1, d2):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, d1)), rng.normal(size=(n, d2))
    y[:, 0] += 2 * x[:, 0]
    expected = numpy_linear_cka(x, y)
    got = cka(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert CKALoss()(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(1 - expected, rel=1e-4)


@pytest.mark.parametrize("kernel,estimator", [("linear", "biased"), ("linear", "unbiased"), ("rbf", "biased")])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel, estimator):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 10, generator=g), torch.randn(24, 6, generator=g)
    y = y + x[:, :6]
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    base = cka(x, y, kernel, estimator)
    assert cka(x @ q, y, kernel, estimator).item() == pytest.approx(base.item(), abs=1e-4)
    assert cka(3.7 * x, 0.2 * y, kernel, estimator).item() == pytest.approx(base.item(), abs=1e-4)


def test_not_invariant_to_anisotropic_scaling():
    # guards against a "CKA" that normalises each feature (which would be invariant here)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 4, generator=g)
    y = x[:, :2] + 0.1 * torch.randn(32, 2, generator=g)
    scale = torch.tensor([1.0, 1.0, 50.0, 50.0])
    assert abs(cka(x, y) - cka(x * scale, y)).item() > 0.05


def test_range_and_identity():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(12, 7, generator=g), torch.randn(12, 9, generator=g)
        v = cka(x, y).item()
        assert 0.0 <= v <= 1.0
    x = torch.randn(12, 7, generator=g)
    assert cka(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert CKALoss()(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_unbiased_hsic_matches_numpy():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 5)), rng.normal(size=(10, 3))
    k, l = x @ x.T, y @ y.T  # noqa: E741
    got = hsic(torch.tensor(k), torch.tensor(l), "unbiased").item()
    assert got == pytest.approx(numpy_unbiased_hsic(k, l), rel=1e-6)


def test_small_batch_gives_zero_not_nan_and_keeps_graph():
    x = torch.randn(1, 5, requires_grad=True)
    y = torch.randn(1, 3, requires_grad=True)
    loss = CKALoss()(x, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert CKALoss(estimator="unbiased")(torch.randn(3, 4), torch.randn(3, 4)).item() == 0.0


def test_constant_features_do_not_give_nan():
    assert torch.isfinite(CKALoss()(torch.ones(8, 4), torch.randn(8, 4)))


def test_float32_under_autocast_and_gradients_reach_both_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 32, generator=g).bfloat16().requires_grad_()
    y = torch.randn(16, 8, generator=g).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CKALoss()(x, y)
    assert loss.dtype == torch.float32
    expected = 1 - numpy_linear_cka(x.detach().double().numpy(), y.detach().double().numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="batch sizes"):
        CKALoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="kernel"):
        CKALoss(kernel="poly")
    with pytest.raises(ValueError, match="estimator"):
        CKALoss(estimator="jackknife")
