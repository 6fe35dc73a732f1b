"""The baselines' trainers: KD from a fixed teacher head (KDTrainer), feature-distillation terms (FeatureKDTrainer),
and direct reprogramming (ReprogrammingTrainer, and its place before RD's first epoch)."""

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from monai_rd.engines import FeatureKDTrainer, KDTrainer, RDTrainer, ReprogrammingTrainer, TeacherFeatureSource
from monai_rd.losses import DistillKLLoss, FitNetsLoss, RDLoss, SimilarityPreservingLoss
from monai_rd.networks import FrozenTeacher, ReprogrammingNet, StudentClassifier
from monai_rd.networks.linear_probe import LinearProbe


def _data(n=24, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    return [{"image": x[i : i + b], "label": y[i : i + b]} for i in range(0, n, b)]


def _parts(seed=0):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        input_size=(12, 12), mean=(0.5,) * 3, std=(0.5,) * 3,
    )
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    student = StudentClassifier(backbone, num_classes=2, num_features=4)
    return teacher, student


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_kd_from_a_fixed_teacher_head_distils_its_logits_and_never_trains_it():
    teacher, student = _parts()
    head = LinearProbe(8, 2)
    with torch.no_grad():
        head.linear.weight.normal_()
    before = _snapshot(head)
    loss = RDLoss(alpha=0.0, gamma=0.0)
    trainer = KDTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.1), loss,
                        teacher_head=head, teacher=teacher, decollate=False)
    seen = []

    def check(engine):  # recompute the KD term from the head on the same batch
        with torch.no_grad():
            t_logits = head(teacher(engine.state.output["image"]))
        expected = DistillKLLoss()(engine.state.output["pred"].detach(), t_logits)
        seen.append((float(engine.state.output["kd"]), float(expected)))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
    trainer.run()
    assert len(seen) == 4 and all(a == pytest.approx(b, rel=1e-5) for a, b in seen)
    assert all(v > 0 for v, _ in seen)
    assert _same(before, _snapshot(head)) and not any(p.requires_grad for p in head.parameters())
    assert float(trainer.state.output["cka"]) == 0.0  # no z_T without Phi


def test_feature_loss_is_added_with_its_weight_on_the_students_map_and_trains_its_own_parameters():
    teacher, student = _parts()
    fitnets = FitNetsLoss(4, 8)
    regressor = _snapshot(fitnets)
    opt = torch.optim.SGD([*student.parameters(), *fitnets.parameters()], lr=0.1)
    trainer = FeatureKDTrainer("cpu", 1, _data(), student, opt, RDLoss(), feature_loss=fitnets,
                               feature_loss_weight=3.0, teacher=teacher, decollate=False)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append([float(e.state.output[k]) for k in ("feature_kd", "loss", "ce_student")]),
    )
    trainer.run()
    assert len(seen) == 4
    for fkd, total, ce in seen:
        assert total == pytest.approx(ce + 3.0 * fkd, rel=1e-5)  # the weighted term is in the total
    assert all(fkd > 0 for fkd, *_ in seen)
    assert not _same(regressor, _snapshot(fitnets))  # the regressor is trained with the student


def test_feature_term_equals_the_loss_on_the_map_and_the_teacher_features_of_the_batch():
    teacher, student = _parts()
    sp = SimilarityPreservingLoss()
    trainer = FeatureKDTrainer("cpu", 1, _data()[:1], student, torch.optim.SGD(student.parameters(), lr=0.0),
                               RDLoss(), feature_loss=sp, teacher=teacher, decollate=False)
    trainer.run()  # lr 0: the weights after the step are those of the forward pass
    x = _data()[0]["image"]
    student.train()
    with torch.no_grad():
        expected = sp(student.backbone[:3](x), teacher(x))
    assert float(trainer.state.output["feature_kd"]) == pytest.approx(float(expected), rel=1e-5)


def test_feature_loss_parameters_outside_the_optimizer_are_refused():
    teacher, student = _parts()
    with pytest.raises(ValueError, match="does not hold the feature_loss's parameters"):
        FeatureKDTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.1), RDLoss(),
                         feature_loss=FitNetsLoss(4, 8), teacher=teacher)


def test_teacher_head_in_the_optimizer_is_refused():
    """Catches a KD trainer that lets the fitted teacher head train with the student."""
    teacher, student = _parts()
    head = LinearProbe(8, 2)
    opt = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=0.1)
    with pytest.raises(ValueError, match="frozen teacher head"):
        KDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher_head=head, teacher=teacher)


def _direct_stage(student, phi, teacher, epochs=3):
    params = [*phi.parameters(), *student.head.parameters()]
    opt = torch.optim.AdamW(params, lr=0.05)
    return ReprogrammingTrainer("cpu", epochs, _data(), phi, student, opt, RDLoss().supervised,
                                TeacherFeatureSource(teacher))


def test_direct_stage_fits_phi_and_the_head_only_then_freezes_them():
    """Catches a direct stage that trains the student's backbone, or leaves Phi trainable afterwards."""
    teacher, student = _parts()
    phi = ReprogrammingNet(8, 4, num_blocks=1, block="bottleneck")
    initial = (_snapshot(phi), _snapshot(student.head), _snapshot(student.backbone))
    _direct_stage(student, phi, teacher).run()
    assert not _same(initial[0], _snapshot(phi)) and not _same(initial[1], _snapshot(student.head))
    assert _same(initial[2], _snapshot(student.backbone))
    assert not phi.training and not any(p.requires_grad for p in [*phi.parameters(), *student.head.parameters()])


def test_direct_stage_refuses_an_optimizer_over_other_parameters():
    """Catches a stage optimizer that would also update the student's backbone."""
    teacher, student = _parts()
    phi = ReprogrammingNet(8, 4, num_blocks=0)
    opt = torch.optim.AdamW([*student.parameters(), *phi.parameters()], lr=0.05)
    with pytest.raises(ValueError, match="outside Phi and the student's head"):
        ReprogrammingTrainer("cpu", 1, _data(), phi, student, opt, RDLoss().supervised, TeacherFeatureSource(teacher))


def test_a_frozen_phi_stays_frozen_and_in_eval_mode_while_rd_trains_the_student():
    """Catches RDTrainer putting a directly reprogrammed (frozen) Phi back in train mode (its BatchNorm statistics
    would then move with the student's batches)."""
    teacher, student = _parts()
    phi = ReprogrammingNet(8, 4, num_blocks=1, block="bottleneck")
    _direct_stage(student, phi, teacher, epochs=1).run()
    fitted = (_snapshot(phi), _snapshot(student.head))
    opt = torch.optim.AdamW([*student.parameters(), *phi.parameters()], lr=0.05)
    before_backbone = _snapshot(student.backbone)
    RDTrainer("cpu", 2, _data(), student, opt, RDLoss(alpha=0.0), reprogrammer=phi, teacher=teacher).run()
    assert _same(fitted[0], _snapshot(phi)) and _same(fitted[1], _snapshot(student.head))
    assert not _same(before_backbone, _snapshot(student.backbone))
