import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_rd.data.unlabelled import UNLABELLED
from monai_rd.losses import DenseDRDLoss, DenseRDLoss, DistillKLLoss, DRDLoss, RDLoss

STAGE_MAPS = [(3, 4, 4), (5, 2, 2)]  # (C, H, W) of the student's map after each stage


def _inputs(seed=0, b=6, c=4, requires_grad=False):
    """z_S, labels, [z_i], [s_i], [phi_i(f_i^T)] for two stages."""
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(b, c, generator=g) * 2
    y = torch.randint(0, c, (b,), generator=g)
    hybrid = [torch.randn(b, c, generator=g) * 2 for _ in STAGE_MAPS]
    maps_s = [torch.randn(b, *shape, generator=g) for shape in STAGE_MAPS]
    maps_t = [m + torch.randn(m.shape, generator=g) for m in maps_s]  # related maps: CKA between 0 and 1
    if requires_grad:
        for x in (z_s, *hybrid, *maps_s, *maps_t):
            x.requires_grad_(True)
    return z_s, y, hybrid, maps_s, maps_t


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kd(z_s, z_t, tau):
    p, q = _softmax(z_t / tau), _softmax(z_s / tau)
    return tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))


def _linear_cka(x, y):
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _np(x):
    return x.detach().double().numpy()


def test_per_stage_cka_matches_numpy_on_flattened_maps():
    """Catches CKA on pooled maps instead of (B, C*H*W), maps of one stage paired with another's, or a missing
    1 - CKA."""
    z_s, y, hybrid, maps_s, maps_t = _inputs()
    out = DRDLoss()(z_s, y, hybrid, maps_s, maps_t)
    for i in range(len(STAGE_MAPS)):
        expected = 1 - _linear_cka(_np(maps_t[i]), _np(maps_s[i]))
        assert out[f"cka_stage{i}"].item() == pytest.approx(expected, rel=1e-4), i
    assert out["cka"].item() == pytest.approx(out["cka_stage0"].item() + out["cka_stage1"].item(), rel=1e-6)


def test_total_matches_a_numpy_recomputation():
    """Catches a weight on the wrong term, a stage's term left out of the sums, the KL's sides swapped (hybrid must
    be the teacher side), or a missing tau^2."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(1)
    alpha, beta, gamma, tau = 0.6, 0.3, 2.0, 3.0
    out = DRDLoss(alpha=alpha, beta=beta, gamma=gamma, tau=tau)(z_s, y, hybrid, maps_s, maps_t)
    ce = [F.cross_entropy(z, y).item() for z in hybrid]
    kd = [_kd(_np(z_s), _np(z), tau) for z in hybrid]
    cka = [1 - _linear_cka(_np(t), _np(s)) for t, s in zip(maps_t, maps_s)]
    for i in range(len(STAGE_MAPS)):
        assert out[f"ce_hybrid_stage{i}"].item() == pytest.approx(ce[i], rel=1e-5)
        assert out[f"kd_stage{i}"].item() == pytest.approx(kd[i], rel=1e-5)
    expected = F.cross_entropy(z_s, y).item() + alpha * sum(ce) + beta * sum(kd) + gamma * sum(cka)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["ce_hybrid"].item() == pytest.approx(sum(ce), rel=1e-5)
    assert out["kd"].item() == pytest.approx(sum(kd), rel=1e-5)


@pytest.mark.parametrize("hybrid", [[], None])
def test_no_stage_is_the_student_alone(hybrid):
    """Catches terms (e.g. the weights times an empty sum) changing the student-alone loss."""
    z_s, y, *_ = _inputs(2)
    out = DRDLoss()(z_s, y, hybrid, hybrid, hybrid)
    assert torch.equal(out["loss"], RDLoss()(z_s, y)["loss"])
    assert out["kd"].item() == out["cka"].item() == out["ce_hybrid"].item() == 0.0


def test_one_stage_at_the_features_is_rd():
    """RD is DRD with one stage: the reprogrammed teacher features through the shared head. Catches DRD's terms
    drifting from RD's (KL direction, CKA argument order, supervised reduction)."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(3)
    y[2] = UNLABELLED
    kwargs = {"alpha": 0.4, "beta": 0.7, "gamma": 1.5, "tau": 2.0}
    drd = DRDLoss(**kwargs)(z_s, y, hybrid[:1], maps_s[:1], maps_t[:1])
    rd = RDLoss(**kwargs)(z_s, y, hybrid[0], maps_s[0].flatten(1), maps_t[0].flatten(1))
    for k_drd, k_rd in (("loss", "loss"), ("ce_hybrid", "ce_teacher"), ("kd", "kd"), ("cka", "cka")):
        assert drd[k_drd].item() == pytest.approx(rd[k_rd].item(), rel=1e-6), k_drd


def _grads(out_term, tensors):
    """Which of the named tensors the term's gradient reaches (non-zero)."""
    grads = torch.autograd.grad(out_term, list(tensors.values()), allow_unused=True, retain_graph=True)
    return {name for name, g in zip(tensors, grads) if g is not None and bool(torch.count_nonzero(g))}


def _named(z_s, hybrid, maps_s, maps_t):
    named = {"z_s": z_s}
    for i in range(len(hybrid)):
        named.update({f"z_{i}": hybrid[i], f"s_{i}": maps_s[i], f"phi_{i}": maps_t[i]})
    return named


@pytest.mark.parametrize("detach_hybrid", [True, False])
def test_gradient_paths_term_by_term(detach_hybrid):
    """L_sup(z_i) reaches z_i only; KL reaches z_S (and z_i only with detach_hybrid=False); CKA reaches phi_i and
    s_i only, stage by stage. Catches an undetached hybrid in the KL, a detached student, CKA on detached maps, and
    a stage's term reaching another stage's tensors."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(4, requires_grad=True)
    out = DRDLoss(detach_hybrid=detach_hybrid)(z_s, y, hybrid, maps_s, maps_t)
    named = _named(z_s, hybrid, maps_s, maps_t)
    assert _grads(out["ce_student"], named) == {"z_s"}
    assert _grads(out["ce_hybrid"], named) == {"z_0", "z_1"}
    assert _grads(out["ce_hybrid_stage1"], named) == {"z_1"}
    assert _grads(out["kd"], named) == ({"z_s"} if detach_hybrid else {"z_s", "z_0", "z_1"})
    assert _grads(out["kd_stage0"], named) == ({"z_s"} if detach_hybrid else {"z_s", "z_0"})
    assert _grads(out["cka"], named) == {"s_0", "phi_0", "s_1", "phi_1"}
    assert _grads(out["cka_stage1"], named) == {"s_1", "phi_1"}
    assert _grads(out["loss"], named) == set(named)
    assert DRDLoss(detach_hybrid=detach_hybrid).detach_hybrid is detach_hybrid


def test_alpha_beta_are_live_attributes():
    """Catches weights read once at construction (the scheduler's decay would do nothing)."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(5)
    loss = DRDLoss()
    full = loss(z_s, y, hybrid, maps_s, maps_t)["loss"].item()
    loss.alpha, loss.beta = 0.0, 0.0
    out = loss(z_s, y, hybrid, maps_s, maps_t)
    assert out["loss"].item() == pytest.approx((out["ce_student"] + out["cka"]).item(), rel=1e-6)
    assert out["loss"].item() < full


def test_gamma_zero_skips_cka_and_maps_may_be_left_out():
    z_s, y, hybrid, maps_s, maps_t = _inputs(6)
    with_maps = DRDLoss(gamma=0.0)(z_s, y, hybrid, maps_s, maps_t)
    without = DRDLoss(gamma=0.0)(z_s, y, hybrid)
    assert with_maps["loss"].item() == without["loss"].item()
    assert with_maps["cka_stage0"].item() == 0.0


def test_unlabelled_rows_leave_the_supervised_terms_but_stay_in_kl_and_cka():
    """Catches label -1 crashing CE or counted as a class, and unlabelled rows dropped from the KL or CKA."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(7)
    y[[0, 3]] = UNLABELLED
    keep = y >= 0
    out = DRDLoss(tau=2.0)(z_s, y, hybrid, maps_s, maps_t)
    assert out["ce_student"].item() == pytest.approx(F.cross_entropy(z_s[keep], y[keep]).item(), rel=1e-6)
    assert out["ce_hybrid_stage0"].item() == pytest.approx(F.cross_entropy(hybrid[0][keep], y[keep]).item(), rel=1e-6)
    assert out["kd_stage0"].item() == pytest.approx(DistillKLLoss(tau=2.0)(z_s, hybrid[0]).item(), rel=1e-6)
    expected_cka = 1 - _linear_cka(_np(maps_t[1]), _np(maps_s[1]))  # every row
    assert out["cka_stage1"].item() == pytest.approx(expected_cka, rel=1e-4)


def test_a_batch_of_unlabelled_images_trains_by_distillation_only():
    z_s, _, hybrid, maps_s, maps_t = _inputs(8, requires_grad=True)
    y = torch.full((z_s.shape[0],), UNLABELLED)
    out = DRDLoss()(z_s, y, hybrid, maps_s, maps_t)
    assert out["ce_student"].item() == 0.0 and out["ce_hybrid"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and z_s.grad.abs().sum() > 0


def test_multi_label_uses_bce_and_the_per_class_binary_kl():
    """Catches CE on multi-hot targets and a softmax KL over independent findings."""
    g = torch.Generator().manual_seed(9)
    z_s, z_1 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = (torch.rand(4, 5, generator=g) > 0.5).float()
    y[1] = UNLABELLED
    out = DRDLoss(multi_label=True, tau=2.0)(z_s, y, [z_1])
    keep = torch.tensor([0, 2, 3])
    bce = F.binary_cross_entropy_with_logits(z_1[keep], y[keep])
    assert out["ce_hybrid_stage0"].item() == pytest.approx(bce.item(), rel=1e-6)
    p, q = torch.sigmoid(z_1 / 2.0), torch.sigmoid(z_s / 2.0)
    binary_kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 4.0
    assert out["kd_stage0"].item() == pytest.approx(binary_kl.item(), rel=1e-5)


def test_logit_standardise_reaches_the_stage_kl():
    """Catches the option dropped between the constructor and the KL, or standardisation on by default."""
    z_s, y, hybrid, *_ = _inputs(10)
    out = DRDLoss(tau=2.0, logit_standardise=True)(z_s, y, hybrid)
    for i, z in enumerate(hybrid):
        expected = DistillKLLoss(tau=2.0, logit_standardise=True)(z_s, z)
        assert out[f"kd_stage{i}"].item() == pytest.approx(expected.item(), rel=1e-6)
    plain = DRDLoss(tau=2.0)(z_s, y, hybrid)
    assert plain["kd_stage0"].item() == pytest.approx(DistillKLLoss(tau=2.0)(z_s, hybrid[0]).item(), rel=1e-6)


def test_stage_cka_is_float32_under_autocast():
    """Catches CKA's Gram products computed in bfloat16 under autocast."""
    z_s, y, hybrid, maps_s, maps_t = _inputs(11)
    ref = DRDLoss()(z_s, y, hybrid, maps_s, maps_t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DRDLoss()(z_s, y, hybrid, [m.bfloat16() for m in maps_s], [m.bfloat16() for m in maps_t])
    assert out["cka_stage0"].dtype == torch.float32
    assert out["cka_stage0"].item() == pytest.approx(ref["cka_stage0"].item(), rel=2e-2)  # bf16 inputs, fp32 maths


def test_bad_stage_arguments_are_named():
    z_s, y, hybrid, maps_s, maps_t = _inputs(12)
    with pytest.raises(ValueError, match="one of each per stage"):
        DRDLoss()(z_s, y, hybrid, maps_s[:1], maps_t)
    with pytest.raises(TypeError, match="list with one tensor per stage"):
        DRDLoss()(z_s, y, hybrid[0], maps_s[0], maps_t[0])
    with pytest.raises(ValueError, match="differ"):
        DRDLoss()(z_s, y, [hybrid[0][:, :3]])
    with pytest.raises(ValueError, match="detach_hybrid"):
        DRDLoss(detach_teacher=False)


# --- dense (segmentation) ---


def _dense_inputs(seed=0, b=2, c=3, requires_grad=False):
    """Two stages at 8x8 and 4x4, logits at 8x8."""
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(b, c, 8, 8, generator=g)
    y = torch.randint(0, c, (b, 1, 8, 8), generator=g)
    hybrid = [torch.randn(b, c, 8, 8, generator=g) for _ in range(2)]
    maps_s = [torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 6, 4, 4, generator=g)]
    maps_t = [m + torch.randn(m.shape, generator=g) for m in maps_s]
    if requires_grad:
        for x in (z_s, *hybrid, *maps_s, *maps_t):
            x.requires_grad_(True)
    return z_s, y, hybrid, maps_s, maps_t


def _voxel_rows(x):
    return np.moveaxis(_np(x), 1, -1).reshape(-1, x.shape[1])


def test_dense_terms_match_a_recomputation():
    """Catches CKA rows taken per sample (B = 2 rows) instead of per voxel, the KL not voxel-wise, or Dice+CE not
    applied to the hybrid logits."""
    z_s, y, hybrid, maps_s, maps_t = _dense_inputs()
    alpha, beta, gamma, tau = 0.5, 0.2, 3.0, 2.0
    # more voxels requested than any stage has: every voxel is a CKA row, so the reference is exact
    loss = DenseDRDLoss(alpha=alpha, beta=beta, gamma=gamma, tau=tau, cka_num_voxels=10_000)
    out = loss(z_s, y, hybrid, maps_s, maps_t)
    task = DenseRDLoss()
    ce = [task.supervised(z, y).item() for z in hybrid]
    kd = [_kd(_voxel_rows(z_s), _voxel_rows(z), tau) for z in hybrid]
    cka = [1 - _linear_cka(_voxel_rows(t), _voxel_rows(s)) for t, s in zip(maps_t, maps_s)]
    for i in range(2):
        assert out[f"ce_hybrid_stage{i}"].item() == pytest.approx(ce[i], rel=1e-5)
        assert out[f"kd_stage{i}"].item() == pytest.approx(kd[i], rel=1e-5)
        assert out[f"cka_stage{i}"].item() == pytest.approx(cka[i], rel=1e-4)
    expected = task.supervised(z_s, y).item() + alpha * sum(ce) + beta * sum(kd) + gamma * sum(cka)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dense_voxel_sampling_is_seeded_and_new_for_every_stage():
    """Catches an unseeded draw (runs not reproducible) and one set of positions reused for every stage."""
    z_s, y, hybrid, maps_s, maps_t = _dense_inputs(1)
    same = [maps_s[0], maps_s[0]], [maps_t[0], maps_t[0]]  # the same maps at both stages
    a = DenseDRDLoss(cka_num_voxels=16, seed=3)(z_s, y, hybrid, *same)
    b = DenseDRDLoss(cka_num_voxels=16, seed=3)(z_s, y, hybrid, *same)
    assert a["cka"].item() == b["cka"].item()
    assert a["cka_stage0"].item() != a["cka_stage1"].item()


@pytest.mark.parametrize("detach_hybrid", [True, False])
def test_dense_gradient_paths(detach_hybrid):
    z_s, y, hybrid, maps_s, maps_t = _dense_inputs(2, requires_grad=True)
    out = DenseDRDLoss(detach_hybrid=detach_hybrid, cka_num_voxels=32)(z_s, y, hybrid, maps_s, maps_t)
    named = _named(z_s, hybrid, maps_s, maps_t)
    assert _grads(out["ce_hybrid"], named) == {"z_0", "z_1"}
    assert _grads(out["kd"], named) == ({"z_s"} if detach_hybrid else {"z_s", "z_0", "z_1"})
    assert _grads(out["cka_stage0"], named) == {"s_0", "phi_0"}


def test_dense_no_stage_is_the_student_alone_and_shapes_are_named():
    z_s, y, hybrid, maps_s, maps_t = _dense_inputs(3)
    assert torch.equal(DenseDRDLoss()(z_s, y, [])["loss"], DenseRDLoss()(z_s, y)["loss"])
    with pytest.raises(ValueError, match="spatial size"):
        DenseDRDLoss()(z_s, y, hybrid, maps_s, [maps_t[0], maps_t[1][..., :2]])
    with pytest.raises(ValueError, match="differ"):
        DenseDRDLoss()(z_s, y, [hybrid[0][..., :4]])
