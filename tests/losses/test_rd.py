import pytest
import torch
import torch.nn.functional as F

from monai_rd.losses import CKALoss, DistillKLLoss, RDLoss


def _inputs(seed=0, b=8, c=3, d=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g),
        torch.randint(0, c, (b,), generator=g),
        torch.randn(b, c, generator=g),
        torch.randn(b, d, generator=g),
        torch.randn(b, d, generator=g),
    )


def test_total_is_weighted_sum_of_terms():
    ls, y, lt, zs, zt = _inputs()
    loss = RDLoss(alpha=0.7, beta=0.3, gamma=2.0, tau=3.0)
    out = loss(ls, y, lt, zs, zt)
    assert out["ce_student"].item() == pytest.approx(F.cross_entropy(ls, y).item(), rel=1e-6)
    assert out["ce_teacher"].item() == pytest.approx(F.cross_entropy(lt, y).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(DistillKLLoss(tau=3.0)(ls, lt).item(), rel=1e-6)
    assert out["cka"].item() == pytest.approx(CKALoss()(zt, zs).item(), rel=1e-6)
    expected = out["ce_student"] + 0.7 * out["ce_teacher"] + 0.3 * out["kd"] + 2.0 * out["cka"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_alpha_beta_are_live_attributes():
    ls, y, lt, zs, zt = _inputs(1)
    loss = RDLoss()
    full = loss(ls, y, lt, zs, zt)["loss"].item()
    loss.alpha, loss.beta = 0.0, 0.0
    out = loss(ls, y, lt, zs, zt)
    assert out["loss"].item() == pytest.approx((out["ce_student"] + out["cka"]).item(), rel=1e-6)
    assert out["loss"].item() < full


def test_student_only():
    ls, y, *_ = _inputs(2)
    out = RDLoss()(ls, y)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(ls, y).item(), rel=1e-6)
    assert out["kd"].item() == 0 and out["cka"].item() == 0


def test_multi_label_uses_bce():
    g = torch.Generator().manual_seed(3)
    ls, lt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = (torch.rand(4, 5, generator=g) > 0.5).float()
    out = RDLoss(multi_label=True)(ls, y, lt, torch.randn(4, 3), torch.randn(4, 3))
    assert out["ce_student"].item() == pytest.approx(F.binary_cross_entropy_with_logits(ls, y).item(), rel=1e-6)


def test_teacher_branch_gradients_reach_shared_head_via_ce_not_kd():
    head = torch.nn.Linear(6, 3)
    ls_in, y, _, zs, zt = _inputs(4)
    zt = zt.requires_grad_()
    loss = RDLoss(alpha=0.0, beta=1.0, gamma=0.0)
    loss(head(zs), y, head(zt), zs, zt)["loss"].backward()
    # alpha=0 and the KD term detaches the teacher branch: nothing flows into z_T
    assert zt.grad is None or torch.count_nonzero(zt.grad) == 0


def test_bad_targets_name_shapes():
    with pytest.raises(ValueError, match="class indices"):
        RDLoss()(torch.randn(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="multi-hot"):
        RDLoss(multi_label=True)(torch.randn(4, 3), torch.zeros(4))
