import numpy as np
import pytest
import torch

from monai_rd.losses import DenseRDLoss, RDLoss

SHAPES = {2: (4, 5), 3: (3, 4, 5)}


def _inputs(dims, seed=0, b=2, c=3, f=6):
    g = torch.Generator().manual_seed(seed)
    sp = SHAPES[dims]
    return (
        torch.randn(b, c, *sp, generator=g),
        torch.randint(0, c, (b, 1, *sp), generator=g),
        torch.randn(b, c, *sp, generator=g),
        torch.randn(b, f, *sp, generator=g),
        torch.randn(b, f + 2, *sp, generator=g),
    )


def _softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _dice_ce(logits, label):
    logits = logits.astype(np.float64)
    c = logits.shape[1]
    p = _softmax(logits)
    onehot = np.stack([(label[:, 0] == k) for k in range(c)], axis=1).astype(np.float64)
    axes = tuple(range(2, logits.ndim))
    inter = (p * onehot).sum(axes)
    dice = 1.0 - (2.0 * inter + 1e-5) / (p.sum(axes) + onehot.sum(axes) + 1e-5)
    ce = -(np.log(p) * onehot).sum(1).mean()
    return dice.mean() + ce


def _rows(x):
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(np.float64)


def _kd(ls, lt, tau):
    log_q = np.log(_softmax(_rows(ls) / tau))
    p = _softmax(_rows(lt) / tau)
    return (p * (np.log(p) - log_q)).sum(1).mean() * tau**2


def _linear_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("dims", [2, 3])
def test_terms_match_a_numpy_reference(dims):
    ls, y, lt, fs, ft = _inputs(dims)
    # more voxels requested than the batch has: every voxel is a CKA sample, so the reference is exact
    loss = DenseRDLoss(alpha=0.7, beta=0.3, gamma=2.0, tau=3.0, cka_num_voxels=10_000)
    out = loss(ls, y, lt, fs, ft)
    n = ls.numpy()
    assert out["ce_student"].item() == pytest.approx(_dice_ce(n, y.numpy()), rel=1e-5)
    assert out["ce_teacher"].item() == pytest.approx(_dice_ce(lt.numpy(), y.numpy()), rel=1e-5)
    assert out["kd"].item() == pytest.approx(_kd(n, lt.numpy(), 3.0), rel=1e-5)
    assert out["cka"].item() == pytest.approx(1.0 - _linear_cka(_rows(ft.numpy()), _rows(fs.numpy())), rel=1e-4)
    expected = out["ce_student"] + 0.7 * out["ce_teacher"] + 0.3 * out["kd"] + 2.0 * out["cka"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_pooled_cka_matches_numpy_on_pooled_maps():
    g = torch.Generator().manual_seed(1)
    ls, lt = torch.randn(6, 3, 4, 4, 4, generator=g), torch.randn(6, 3, 4, 4, 4, generator=g)
    y = torch.randint(0, 3, (6, 1, 4, 4, 4), generator=g)
    fs, ft = torch.randn(6, 5, 4, 4, 4, generator=g), torch.randn(6, 7, 4, 4, 4, generator=g)
    out = DenseRDLoss(cka_mode="pooled")(ls, y, lt, fs, ft)
    pooled_s, pooled_t = fs.numpy().reshape(6, 5, -1).mean(2), ft.numpy().reshape(6, 7, -1).mean(2)
    assert out["cka"].item() == pytest.approx(1.0 - _linear_cka(pooled_t, pooled_s), rel=1e-4)


def test_sampled_voxels_are_the_same_positions_in_both_maps():
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(2, 6, 8, 8, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    # the teacher map is a per-voxel rotation of the student map: CKA is 1 on any set of matching positions
    ft = torch.einsum("bc...,cd->bd...", fs, rotation)
    loss = DenseRDLoss(cka_num_voxels=64)
    rows_t, rows_s = loss.sample_voxels(ft, fs)
    assert rows_t.shape == (64, 6) and rows_s.shape == (64, 6)
    assert torch.allclose(rows_s @ rotation, rows_t, atol=1e-5)
    assert loss.cka(rows_t, rows_s).item() == pytest.approx(0.0, abs=1e-5)
    # shuffling the teacher's voxels breaks the correspondence, and the loss sees it
    shuffled = ft.flatten(2)[..., torch.randperm(512, generator=g)].reshape(ft.shape)
    assert loss.cka(*loss.sample_voxels(shuffled, fs)).item() > 0.5


def test_voxel_sampling_is_seeded_and_moves_between_batches():
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 4, 16, 16, 16, generator=g), torch.randn(2, 4, 16, 16, 16, generator=g)
    # 8192 voxels: the large-batch draw (randint with redraws) must still give distinct positions
    first = [DenseRDLoss(cka_num_voxels=256, seed=7).sample_voxels(ft, fs)[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    assert torch.unique(first[0], dim=0).shape[0] == 256
    loss = DenseRDLoss(cka_num_voxels=256, seed=7)
    loss.sample_voxels(ft, fs)
    assert not torch.equal(loss.sample_voxels(ft, fs)[1], first[0])
    assert not torch.equal(DenseRDLoss(cka_num_voxels=256, seed=8).sample_voxels(ft, fs)[1], first[0])


def test_student_alone_is_dice_ce_only():
    ls, y, *_ = _inputs(3, seed=4)
    out = DenseRDLoss()(ls, y[:, 0])  # labels without the channel dim are accepted
    assert out["loss"].item() == pytest.approx(_dice_ce(ls.numpy(), y.numpy()), rel=1e-5)
    assert out["kd"].item() == 0 and out["cka"].item() == 0 and out["ce_teacher"].item() == 0


@pytest.mark.parametrize(
    "alpha, beta, gamma, reaches_teacher_branch",
    [(1.0, 0.0, 0.0, True), (0.0, 1.0, 0.0, False), (0.0, 0.0, 1.0, True), (0.0, 0.0, 0.0, False)],
)
def test_which_terms_send_gradient_into_the_teacher_branch(alpha, beta, gamma, reaches_teacher_branch):
    # Dice+CE_T reaches f_T through the shared head, CKA directly; KD detaches the teacher branch
    head = torch.nn.Conv2d(6, 3, 1)
    _, y, _, fs, _ = _inputs(2, seed=5)
    ft = torch.randn_like(fs).requires_grad_()
    loss = DenseRDLoss(alpha=alpha, beta=beta, gamma=gamma)
    loss(head(fs), y, head(ft), fs, ft)["loss"].backward()
    assert (ft.grad is not None and bool(torch.count_nonzero(ft.grad))) == reaches_teacher_branch


def test_is_an_rd_loss_with_live_schedule_attributes():
    ls, y, lt, fs, ft = _inputs(2, seed=6)
    loss = DenseRDLoss()
    assert isinstance(loss, RDLoss)  # RD's trainer, handlers and alpha/beta schedule accept it
    full = loss(ls, y, lt, fs, ft)["loss"].item()
    loss.alpha = loss.beta = 0.0
    out = loss(ls, y, lt, fs, ft)
    assert out["loss"].item() == pytest.approx((out["ce_student"] + out["cka"]).item(), rel=1e-6)
    assert out["loss"].item() != pytest.approx(full)


def test_bad_shapes_and_options_are_named():
    ls, y, lt, fs, ft = _inputs(2, seed=7)
    loss = DenseRDLoss()
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\) = \(2, 1, 4, 5\)"):
        loss(ls, y[..., :4])
    with pytest.raises(ValueError, match="C >= 2"):
        loss(ls[:, :1], y)
    with pytest.raises(ValueError, match="differ"):
        loss(ls, y, lt[..., :4])
    with pytest.raises(ValueError, match="spatial size"):
        loss(ls, y, lt, fs, ft[..., :4])
    with pytest.raises(ValueError, match="cka_mode"):
        DenseRDLoss(cka_mode="random")
    with pytest.raises(ValueError, match="cka_num_voxels"):
        DenseRDLoss(cka_num_voxels=1)


def test_logit_standardise_z_scores_each_voxel_over_the_classes():
    """Catches the option not reaching the dense KD term, or a z-score over voxels instead of classes."""
    ls, y, lt, fs, ft = _inputs(2, seed=8)

    def z(x):
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    got = DenseRDLoss(tau=2.0, logit_standardise=True)(ls, y, lt, fs, ft)["kd"]
    rows_s, rows_t = z(_rows(ls.numpy())), z(_rows(lt.numpy()))
    log_q, p = np.log(_softmax(rows_s / 2.0)), _softmax(rows_t / 2.0)
    assert got.item() == pytest.approx((p * (np.log(p) - log_q)).sum(1).mean() * 4.0, rel=1e-5)
