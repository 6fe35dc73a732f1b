import numpy as np
import pytest
import torch

from monai_rd.losses import ContrastiveRepresentationLoss


def _log_softmax(z, axis):
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def test_matches_numpy_symmetric_infonce_on_pooled_embeddings():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 5))
    loss = ContrastiveRepresentationLoss(3, 5, embed_dim=6, temperature=0.5).double()
    ws, bs = loss.embed_student.weight.detach().numpy(), loss.embed_student.bias.detach().numpy()
    wt, bt = loss.embed_teacher.weight.detach().numpy(), loss.embed_teacher.bias.detach().numpy()
    e_s = s.mean(axis=(2, 3)) @ ws.T + bs
    e_t = t @ wt.T + bt
    e_s /= np.linalg.norm(e_s, axis=1, keepdims=True)
    e_t /= np.linalg.norm(e_t, axis=1, keepdims=True)
    logits = e_s @ e_t.T / 0.5
    expected = -(np.diag(_log_softmax(logits, 1)).mean() + np.diag(_log_softmax(logits, 0)).mean()) / 2
    got = loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_aligned_embeddings_score_lower_than_shuffled_ones():
    loss = ContrastiveRepresentationLoss(4, 4, embed_dim=4, temperature=0.1)
    with torch.no_grad():
        for lin in (loss.embed_student, loss.embed_teacher):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    x = torch.eye(4) + 0.01
    aligned = loss(x, x).item()
    assert aligned < loss(x, x[[1, 2, 3, 0]]).item()
    assert aligned < 0.01  # each image picks itself among 4 orthogonal embeddings at temperature 0.1


def test_gradients_reach_both_embeddings_and_the_student_never_the_teacher_features():
    loss = ContrastiveRepresentationLoss(3, 5)
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    loss(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert loss.embed_student.weight.grad.abs().sum() > 0 and loss.embed_teacher.weight.grad.abs().sum() > 0


def test_needs_two_images_and_positive_temperature():
    with pytest.raises(ValueError, match="at least 2 images"):
        ContrastiveRepresentationLoss(3, 5)(torch.randn(1, 3), torch.randn(1, 5))
    with pytest.raises(ValueError, match="temperature must be positive"):
        ContrastiveRepresentationLoss(3, 5, temperature=0)
