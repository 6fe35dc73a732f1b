import pytest
import torch
import torch.nn as nn

from monai_rd.engines import DenseRDTrainer, DistillationTrainer
from monai_rd.losses import DenseRDLoss, RDLoss
from monai_rd.networks import FrozenTeacher, ReprogrammingNet, SegmentationStudent

TERMS = ("loss", "ce_student", "ce_teacher", "kd", "cka")


def _data(dims=3, n=4, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, *(size,) * dims, generator=g)
    y = (x * 2.999).long()  # three intensity classes: a learnable, deterministic label map
    return [{"image": x[i : i + b], "label": y[i : i + b]} for i in range(0, n, b)]


def _parts(dims=3, seed=0):
    torch.manual_seed(seed)
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    # a teacher with a coarse map (stride 4): Phi must resample it to the student's full-resolution map
    teacher = FrozenTeacher(
        nn.Sequential(conv(1, 6, 4, stride=4), bn(6), nn.ReLU()),
        input_size=(16,) * dims, mean=(0.5,), std=(0.5,), in_channels=1,
    )
    student = SegmentationStudent("unet", num_classes=3, spatial_dims=dims, channels=(4, 8), strides=(2,))
    phi = ReprogrammingNet(6, student.feature_channels, num_blocks=1, spatial_dims=dims, dense=True)
    return teacher, student, phi


def _trainer(data, teacher, student, phi, loss=None, epochs=1, lr=0.05, **kwargs):
    params = list(student.parameters()) + (list(phi.parameters()) if phi is not None else [])
    return DenseRDTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=data,
        network=student,
        optimizer=torch.optim.SGD(params, lr=lr),
        loss_function=loss or DenseRDLoss(cka_num_voxels=256),
        teacher=teacher,
        reprogrammer=phi,
        decollate=False,
        **kwargs,
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_teacher_stays_frozen_while_student_and_phi_learn(dims):
    teacher, student, phi = _parts(dims)
    teacher.model.train()  # even a teacher handed over in train mode keeps its BatchNorm statistics
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    before_phi = {k: v.clone() for k, v in phi.state_dict().items()}
    trainer = _trainer(_data(dims), teacher, student, phi, epochs=2)
    trainer.run()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_t[k]), k
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(v, before_s[k]) for k, v in student.state_dict().items())
    assert any(not torch.equal(v, before_phi[k]) for k, v in phi.state_dict().items())
    out = trainer.state.output
    assert out["pred"].shape == (2, 3, *(16,) * dims)
    assert all(torch.isfinite(out[k]) and out[k].ndim == 0 for k in TERMS)
    assert out["kd"] > 0 and out["cka"] > 0


def _grads_after_one_step(alpha, beta, gamma, task_weight):
    teacher, student, phi = _parts(seed=1)
    loss = DenseRDLoss(
        alpha=alpha, beta=beta, gamma=gamma, lambda_dice=task_weight, lambda_ce=task_weight, cka_num_voxels=256
    )
    trainer = _trainer(_data(n=2), teacher, student, phi, loss=loss, lr=0.0)
    trainer.run()

    def total(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    return total(phi), total(student.head), student.head.weight.grad.clone()


@pytest.mark.parametrize(
    "term, weights, reaches_phi, reaches_head",
    [
        ("Dice+CE of the student", (0.0, 0.0, 0.0, 1.0), False, True),
        ("Dice+CE of the teacher branch", (1.0, 0.0, 0.0, 1.0), True, True),
        ("voxel KD (teacher detached)", (0.0, 1.0, 0.0, 0.0), False, True),
        ("CKA on features", (0.0, 0.0, 1.0, 0.0), True, False),
    ],
)
def test_gradient_routing_of_each_term(term, weights, reaches_phi, reaches_head):
    phi_grad, head_grad, _ = _grads_after_one_step(*weights)
    assert (phi_grad > 0) == reaches_phi, term
    assert (head_grad > 0) == reaches_head, term


def test_teacher_branch_task_term_also_trains_the_shared_head():
    # the head's gradient with alpha = 1 differs from the student-only one: h is shared by both branches
    *_, with_teacher = _grads_after_one_step(1.0, 0.0, 0.0, 1.0)
    *_, student_only = _grads_after_one_step(0.0, 0.0, 0.0, 1.0)
    assert not torch.allclose(with_teacher, student_only)


def test_precomputed_feature_maps_replace_the_teacher():
    _, student, phi = _parts()
    g = torch.Generator().manual_seed(2)
    data = [dict(d, teacher_features=torch.rand(2, 6, 4, 4, 4, generator=g)) for d in _data()]
    trainer = _trainer(data, None, student, phi)
    trainer.run()
    assert trainer.state.output["kd"] > 0 and trainer.state.output["cka"] > 0
    assert all(p.grad is not None for p in phi.parameters())


def test_student_alone_trains_with_dice_ce_only():
    """The segmentation baseline: DistillationTrainer with the same Dice+CE (catches teacher terms leaking in)."""
    _, student, _ = _parts()
    trainer = DistillationTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.05),
                                  DenseRDLoss(cka_num_voxels=256), decollate=False)
    trainer.run()
    out = trainer.state.output
    assert out["kd"] == 0 and out["cka"] == 0 and out["ce_teacher"] == 0
    assert out["loss"] == out["ce_student"]


def test_wrong_loss_or_pooled_phi_is_refused():
    teacher, student, phi = _parts()
    with pytest.raises(ValueError, match="DenseRDLoss"):
        _trainer(_data(), teacher, student, phi, loss=RDLoss())
    pooled = ReprogrammingNet(6, 4, spatial_dims=3)
    with pytest.raises(ValueError, match="dense=True"):
        _trainer(_data(), teacher, student, pooled)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_dense_training_keeps_teacher_frozen_and_terms_finite():
    teacher, student, phi = _parts()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = list(student.parameters()) + list(phi.parameters())
    trainer = DenseRDTrainer(
        "cuda", 2, _data(), student.cuda(), torch.optim.AdamW(params, lr=1e-3), DenseRDLoss(cka_num_voxels=256),
        teacher=teacher, reprogrammer=phi, amp=True, decollate=False, grad_clip_norm=1.0,
    )
    trainer.run()
    out = trainer.state.output
    assert all(torch.isfinite(out[k]) for k in TERMS)
    assert out["cka"].dtype == torch.float32 and out["kd"] > 0
    for k, v in teacher.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k
