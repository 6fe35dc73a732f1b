import pytest
import torch
import torch.nn.functional as F

from monai_rd.losses import CKALoss, DistillKLLoss, RDLoss
from monai_rd.utils.constants import UNLABELLED


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


def test_multi_label_uses_bce_and_keeps_the_term_balance_for_any_number_of_classes():
    g = torch.Generator().manual_seed(3)
    ls, lt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = (torch.rand(4, 5, generator=g) > 0.5).float()
    zs, zt = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss = RDLoss(multi_label=True)
    out = loss(ls, y, lt, zs, zt)
    assert out["ce_student"].item() == pytest.approx(F.binary_cross_entropy_with_logits(ls, y).item(), rel=1e-6)
    assert out["ce_teacher"].item() == pytest.approx(F.binary_cross_entropy_with_logits(lt, y).item(), rel=1e-6)
    # the same findings listed 14 times: every term, so the whole loss, is unchanged (a KD summed over
    # classes would be 14x larger here while BCE stays put)
    wide = loss(ls.repeat(1, 14), y.repeat(1, 14), lt.repeat(1, 14), zs, zt)
    for k in ("loss", "ce_student", "ce_teacher", "kd", "cka"):
        assert wide[k].item() == pytest.approx(out[k].item(), rel=1e-5), k


@pytest.mark.parametrize(
    "alpha, beta, gamma, reaches_teacher_branch",
    [(1.0, 0.0, 0.0, True), (0.0, 1.0, 0.0, False), (0.0, 0.0, 1.0, True), (0.0, 0.0, 0.0, False)],
)
def test_which_terms_send_gradient_into_the_teacher_branch(alpha, beta, gamma, reaches_teacher_branch):
    # CE_T reaches z_T through the shared head, CKA directly; KD detaches the teacher branch; CE_S never touches it
    head = torch.nn.Linear(6, 3)
    _, y, _, zs, zt = _inputs(4)
    zt = zt.requires_grad_()
    loss = RDLoss(alpha=alpha, beta=beta, gamma=gamma)
    loss(head(zs), y, head(zt), zs, zt)["loss"].backward()
    got = zt.grad is not None and bool(torch.count_nonzero(zt.grad))
    assert got == reaches_teacher_branch


def test_bad_targets_name_shapes():
    with pytest.raises(ValueError, match="class indices"):
        RDLoss()(torch.randn(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="multi-hot"):
        RDLoss(multi_label=True)(torch.randn(4, 3), torch.zeros(4))


def test_unlabelled_rows_leave_the_supervised_terms_but_stay_in_kd_and_cka():
    """Catches label -1 crashing CE or counted as a class, and unlabelled images dropped from the distillation."""
    ls, y, lt, zs, zt = _inputs()
    y[[1, 4, 6]] = UNLABELLED
    keep = y >= 0
    out = RDLoss(tau=2.0)(ls, y, lt, zs, zt)
    assert out["ce_student"].item() == pytest.approx(F.cross_entropy(ls[keep], y[keep]).item(), rel=1e-6)
    assert out["ce_teacher"].item() == pytest.approx(F.cross_entropy(lt[keep], y[keep]).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(DistillKLLoss(tau=2.0)(ls, lt).item(), rel=1e-6)  # every row
    assert out["cka"].item() == pytest.approx(CKALoss()(zt, zs).item(), rel=1e-6)


def test_a_batch_of_unlabelled_images_only_trains_the_student_by_distillation():
    ls, _, lt, zs, zt = _inputs()
    ls.requires_grad_(True)
    y = torch.full((ls.shape[0],), UNLABELLED)
    out = RDLoss()(ls, y, lt, zs, zt)
    assert out["ce_student"].item() == 0.0 and out["ce_teacher"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and ls.grad.abs().sum() > 0  # the KD term still reaches the student


def test_multi_label_unlabelled_rows_are_all_minus_one():
    g = torch.Generator().manual_seed(0)
    ls, lt = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([[1.0, 0, 1], [-1, -1, -1], [0, 1, 0], [-1, -1, -1]])
    out = RDLoss(multi_label=True)(ls, y, lt)
    expected = F.binary_cross_entropy_with_logits(ls[[0, 2]], y[[0, 2]])
    assert out["ce_student"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_logit_standardise_reaches_the_kd_term_and_is_off_by_default():
    """Catches the option not passed on to the KD term, or passed on as True by default."""
    ls, y, lt, zs, zt = _inputs(5)
    ls_kd = RDLoss(tau=2.0, logit_standardise=True)(ls, y, lt, zs, zt)["kd"]
    assert ls_kd.item() == pytest.approx(DistillKLLoss(tau=2.0, logit_standardise=True)(ls, lt).item(), rel=1e-6)
    assert RDLoss(tau=2.0)(ls, y, lt * 3, zs, zt)["kd"].item() == pytest.approx(
        DistillKLLoss(tau=2.0)(ls, lt * 3).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="multi-label"):
        RDLoss(multi_label=True, logit_standardise=True)
