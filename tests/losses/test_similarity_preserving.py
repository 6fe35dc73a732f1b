import numpy as np
import pytest
import torch

from monai_rd.losses import SimilarityPreservingLoss, similarity_matrix


def _g(x):
    q = x.reshape(x.shape[0], -1)
    g = q @ q.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_matches_the_papers_formula_for_maps_of_different_shapes():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 4, 2, 2)), rng.normal(size=(5, 7, 3, 3))
    expected = np.sum((_g(s) - _g(t)) ** 2) / 5**2
    got = SimilarityPreservingLoss()(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_vectors_rows_unit_norm_and_scale_invariance():
    x = torch.randn(4, 6)
    g = similarity_matrix(x)
    torch.testing.assert_close(g.norm(dim=1), torch.ones(4))
    loss = SimilarityPreservingLoss()
    y = torch.randn(4, 3)
    assert loss(x * 5, y).item() == pytest.approx(loss(x, y).item(), rel=1e-5)
    assert loss(x, x * 3).item() == pytest.approx(0.0, abs=1e-10)


def test_teacher_gets_no_gradient_and_batches_must_match():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    SimilarityPreservingLoss()(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match="batch sizes 3"):
        SimilarityPreservingLoss()(torch.randn(3, 4), torch.randn(2, 4))
