"""DRDTrainer and DenseDRDTrainer on tiny teachers and students (CPU, a few seconds): each loss term's gradient
path through the real training step, the frozen teacher, the BatchNorm statistics of hybrid passes, the ablations'
terms and the stage-map cache served by source path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from monai_rd.data import TeacherFeatureCache
from monai_rd.engines import DenseDRDTrainer, DRDTrainer
from monai_rd.engines.drd_trainer import batch_statistics_only
from monai_rd.losses import DenseDRDLoss, DRDLoss
from monai_rd.networks import FrozenTeacher, SegmentationStudent, StudentClassifier, build_stage_projectors
from monai_rd.networks.stage_map_teacher import StageMapTeacher
from monai_rd.networks.stage_taps import HookTaps

SIZE = 32


def _teacher(num_taps=4, seed=0):
    """A BatchNorm CNN whose block outputs (/2 .. /16) are the taps."""
    torch.manual_seed(seed)
    widths = [1, 4, 6, 8, 10][: num_taps + 1]
    blocks = [nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU())
              for i, o in zip(widths, widths[1:])]
    return FrozenTeacher(nn.Sequential(*blocks), input_size=(SIZE, SIZE), mean=(0.5,), std=(0.5,), in_channels=1,
                         stage_taps=HookTaps([str(k) for k in range(num_taps)]))


def _classifier_parts(stages=(0, 1, 2, 3), seed=0):
    teacher = _teacher(seed=seed)
    torch.manual_seed(seed + 1)
    student = StudentClassifier("monai:resnet10", num_classes=3, in_channels=1, spatial_dims=2, widen_factor=0.25)
    shapes = student.stage_shapes((SIZE, SIZE))
    teacher.select_stages([teacher.stage_names[i] for i in stages])
    phis = build_stage_projectors(teacher.stage_channels, [shapes[i][0] for i in stages], hidden_channels=8)
    return StageMapTeacher(teacher, [shapes[i][1:] for i in stages]), student, phis


def _batches(n=4, b=4, seed=0, classes=3, dense=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g)
    y = (x * (classes - 1e-3)).long() if dense else torch.randint(0, classes, (n,), generator=g)
    return [{"image": x[i : i + b], "label": y[i : i + b], "image_path": [f"img{j}" for j in range(i, i + b)]}
            for i in range(0, n, b)]


def _trainer(teacher, student, phis, loss=None, data=None, epochs=1, cls=DRDTrainer, **kwargs):
    kwargs.setdefault("levels", tuple(range(len(phis))))
    params = list(student.parameters()) + list(phis.parameters())
    return cls(
        device="cpu", max_epochs=epochs, train_data_loader=data or _batches(), network=student,
        optimizer=torch.optim.SGD(params, lr=0.01), loss_function=loss or DRDLoss(), projectors=phis,
        teacher=teacher, decollate=False, **kwargs,
    )


def _gradients_of(trainer, term):
    """Run one real step whose backward is ``term`` alone; the gradient norm of each parameter after it."""
    grads = {}

    def only_term(engine):
        engine.state.output["loss"] = engine.state.output[term]

    def record(engine):
        modules = {"student": engine.network, "phi": engine.projectors, "teacher": engine.teacher}
        for role, m in modules.items():
            for n, p in m.named_parameters():
                grads[f"{role}.{n}"] = 0.0 if p.grad is None else float(p.grad.abs().sum())

    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, only_term)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, record)
    trainer.run()
    return grads


def _norm(grads, params):
    return sum(grads[n] for n in params)


def _stage_params(student, k, prefix="student."):
    ids = {id(p) for m in student.stage_modules(k) for p in m.parameters()}
    return [prefix + n for n, p in student.named_parameters() if id(p) in ids]


def _phi_params(phis, i):
    return [f"phi.{i}.{n}" for n, _ in phis[i].named_parameters()]


def _head_params(student):
    return [f"student.head.{n}" for n, _ in student.head.named_parameters()]


@pytest.mark.parametrize("i", [0, 2])
def test_hybrid_task_loss_reaches_phi_i_and_later_stages_only(i):
    """L_sup(z_i) through the real step: a gradient into the student's stages <= i (the hybrid path running from
    the image, not from phi_i), none into phi_i or the head, or any into another phi or the teacher, fails."""
    teacher, student, phis = _classifier_parts()
    grads = _gradients_of(_trainer(teacher, student, phis), f"ce_hybrid_stage{i}")
    assert _norm(grads, _phi_params(phis, i)) > 0 and _norm(grads, _head_params(student)) > 0
    for k in range(4):
        got = _norm(grads, _stage_params(student, k))
        assert (got > 0) == (k > i), (k, got)
        if k != i:
            assert _norm(grads, _phi_params(phis, k)) == 0, k
    assert all(v == 0 for n, v in grads.items() if n.startswith("teacher."))


@pytest.mark.parametrize("i", [1, 3])
def test_stage_cka_reaches_phi_i_and_the_stages_up_to_i(i):
    """cka_stage<i>: catches CKA on the wrong stage's map, a detached projector or student map, and a gradient
    into later stages or the head (which do not compute s_i)."""
    teacher, student, phis = _classifier_parts()
    grads = _gradients_of(_trainer(teacher, student, phis), f"cka_stage{i}")
    assert _norm(grads, _phi_params(phis, i)) > 0
    assert all(_norm(grads, _phi_params(phis, k)) == 0 for k in range(4) if k != i)
    for k in range(4):
        assert (_norm(grads, _stage_params(student, k)) > 0) == (k <= i), k
    assert _norm(grads, _head_params(student)) == 0


@pytest.mark.parametrize("detach", [True, False])
def test_kl_reaches_what_detach_hybrid_allows(detach):
    """kd_stage1: with detach_hybrid the student's own path learns (every stage and the head) and phi_1 gets
    nothing; without it phi_1 learns too. Either way no other phi and not the teacher."""
    teacher, student, phis = _classifier_parts()
    grads = _gradients_of(_trainer(teacher, student, phis, loss=DRDLoss(detach_hybrid=detach)), "kd_stage1")
    assert all(_norm(grads, _stage_params(student, k)) > 0 for k in range(4))
    assert _norm(grads, _head_params(student)) > 0
    assert (_norm(grads, _phi_params(phis, 1)) > 0) == (not detach)
    assert all(_norm(grads, _phi_params(phis, k)) == 0 for k in (0, 2, 3))
    assert all(v == 0 for n, v in grads.items() if n.startswith("teacher."))


def test_teacher_bit_identical_and_loss_is_the_weighted_sum():
    """Two epochs with the live teacher handed over in train mode: its weights and BatchNorm statistics are
    bit-identical after, student and projectors changed; the logged total is the DRD formula of the logged terms,
    and the per-stage terms are named by the student's stage (stages 1 and 3 here, not 0 and 1)."""
    teacher, student, phis = _classifier_parts(stages=(1, 3))
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    before_s, before_phi = copy.deepcopy(student.state_dict()), copy.deepcopy(phis.state_dict())
    loss = DRDLoss(alpha=0.7, beta=0.3, gamma=2.0)
    trainer = _trainer(teacher, student, phis, loss=loss, levels=(1, 3), epochs=2, data=_batches(n=8))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    after = teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before_s.items())
    assert any(not torch.equal(v, phis.state_dict()[k]) for k, v in before_phi.items())
    assert trainer.loss_keys == ("ce_student", "ce_hybrid", "kd", "cka", "ce_hybrid_stage1", "kd_stage1",
                                 "cka_stage1", "ce_hybrid_stage3", "kd_stage3", "cka_stage3")
    for o in outputs:
        assert set(trainer.loss_keys) <= set(o)
        assert float(o["ce_hybrid"]) == pytest.approx(float(o["ce_hybrid_stage1"] + o["ce_hybrid_stage3"]), rel=1e-5)
        total = o["ce_student"] + 0.7 * o["ce_hybrid"] + 0.3 * o["kd"] + 2.0 * o["cka"]
        assert float(o["loss"]) == pytest.approx(float(total), rel=1e-5)


def _bn_buffers(module):
    return {n: b.clone() for n, b in module.named_buffers() if "running" in n or "num_batches" in n}


@pytest.mark.parametrize("hybrid_norm", ["batch", "track"])
def test_running_statistics_after_a_step_are_the_students_own_pass(hybrid_norm):
    """With "batch" the student's BatchNorm buffers after a training step equal those of its own train-mode pass on
    the batch alone (a hybrid pass updating them fails); "track" moves them with every hybrid pass too."""
    teacher, student, phis = _classifier_parts()
    reference = copy.deepcopy(student).train()
    data = _batches(n=4, b=4)
    with torch.no_grad():
        reference.forward_features(data[0]["image"])
    _trainer(teacher, student, phis, data=data, hybrid_norm=hybrid_norm).run()
    got, expected = _bn_buffers(student), _bn_buffers(reference)
    assert got.keys() == expected.keys() and got
    same = all(torch.allclose(got[k].float(), expected[k].float(), atol=1e-6) for k in got)
    assert same == (hybrid_norm == "batch")
    if hybrid_norm == "track":  # the last stage runs in the student's own pass and the hybrid paths 0, 1 and 2
        assert int(got["backbone.layer4.0.bn1.num_batches_tracked"]) == 4
    assert all(m.track_running_stats for m in student.modules() if isinstance(m, nn.BatchNorm2d))


def test_batch_statistics_only_normalises_like_train_mode():
    """Inside the block a BatchNorm layer gives train mode's output and gradient (batch statistics), not eval
    mode's, and its buffers do not move; outside, it updates them again."""
    bn = nn.BatchNorm2d(3).train()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    plain = nn.BatchNorm2d(3).train()(x)
    with batch_statistics_only(bn):
        y = bn(x)
    assert torch.allclose(y, plain) and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros(3))
    bn(x)
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats


@pytest.mark.parametrize("hybrid", [True, False])
def test_no_hybrid_keeps_the_supervised_term_and_stage_cka(hybrid):
    """drd_no_hybrid's step runs the student's last stage once (the hybrid paths 0, 1, 2 run it three more times),
    its loss is CE + gamma * sum of the stages' CKA, and only those terms are logged."""
    teacher, student, phis = _classifier_parts()
    trainer = _trainer(teacher, student, phis, loss=DRDLoss(gamma=0.5), hybrid=hybrid)
    out, calls = {}, []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: out.update(e.state.output))
    student.backbone.layer4.register_forward_hook(lambda *a: calls.append(1))
    trainer.run()
    assert len(calls) == (4 if hybrid else 1)
    if hybrid:
        return
    assert trainer.loss_keys == ("ce_student", "ce_hybrid", "kd", "cka", *(f"cka_stage{i}" for i in range(4)))
    assert float(out["ce_hybrid"]) == 0 and float(out["kd"]) == 0
    assert float(out["cka"]) == pytest.approx(sum(float(out[f"cka_stage{i}"]) for i in range(4)), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["ce_student"] + 0.5 * out["cka"]), rel=1e-5)


def test_cached_stage_maps_are_found_by_source_path():
    """A cache built from the stage-map teacher serves the batch by its paths (no row index in the batch): the
    maps the step unpacks equal the live teacher's within float16 rounding, and the live teacher is never run."""
    teacher, student, phis = _classifier_parts()
    data = _batches(n=8, b=4)
    images = {p: x for d in data for p, x in zip(d["image_path"], d["image"])}
    cache = TeacherFeatureCache(teacher, transform=lambda it: {"image": images[it["image"]]}, batch_size=3)
    cache.build([{"image": p} for p in images])
    trainer = _trainer(teacher, student, phis, data=data, feature_cache=cache)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(
        e.teacher_maps(e.teacher_features(e.state.batch, e.state.batch["image"]))))
    trainer.run()
    assert not calls
    for batch, maps in zip(data, seen):
        live = teacher.teacher.stage_maps(batch["image"])
        for m, f in zip(maps, live):
            pooled = torch.nn.functional.adaptive_avg_pool2d(f, m.shape[2:])
            torch.testing.assert_close(m, pooled, rtol=1e-3, atol=1e-3)  # float16 storage


def _segmentation_parts(seed=0):
    teacher = _teacher(num_taps=3, seed=seed)
    torch.manual_seed(seed + 1)
    student = SegmentationStudent("unet", num_classes=3, spatial_dims=2, channels=(4, 8, 16), strides=(2, 2))
    shapes = student.stage_shapes((SIZE, SIZE))
    phis = build_stage_projectors(teacher.stage_channels, [s[0] for s in shapes], hidden_channels=8)
    return StageMapTeacher(teacher, [s[1:] for s in shapes]), student, phis


@pytest.mark.parametrize("i", [0, 1])
def test_segmentation_hybrid_path_takes_skips_from_phi_0_to_i(i):
    """DenseDRDTrainer: L_sup(z_i) reaches phi_0..phi_i (the skips of levels <= i), never phi of deeper levels nor
    the student's encoder levels <= i; a voxel-wise step runs with the logged terms."""
    teacher, student, phis = _segmentation_parts()
    loss = DenseDRDLoss(cka_num_voxels=64)
    trainer = _trainer(teacher, student, phis, loss=loss, cls=DenseDRDTrainer, data=_batches(n=2, b=2, dense=True))
    grads = _gradients_of(trainer, f"ce_hybrid_stage{i}")
    for k in range(3):
        assert (_norm(grads, _phi_params(phis, k)) > 0) == (k <= i), k
        assert (_norm(grads, _stage_params(student, k)) > 0) == (k > i), k


def test_segmentation_hybrid_needs_every_shallower_level():
    """A dense hybrid path of level 2 without projectors of levels 0 and 1 is refused when built, naming them."""
    teacher, student, phis = _segmentation_parts()
    with pytest.raises(ValueError, match=r"levels \(2,\) must include 0\.\.2"):
        _trainer(teacher, student, phis[2:], loss=DenseDRDLoss(), cls=DenseDRDTrainer, levels=(2,))


def test_refuses_a_teacher_that_cannot_unpack_and_a_wrong_loss():
    """A plain FrozenTeacher (its forward is one map, not the packed stage maps) and an RD loss are refused."""
    from monai_rd.losses import RDLoss

    teacher, student, phis = _classifier_parts()
    with pytest.raises(ValueError, match="StageMapTeacher"):
        _trainer(teacher.teacher, student, phis)
    with pytest.raises(ValueError, match="DRDLoss"):
        _trainer(teacher, student, phis, loss=RDLoss())
