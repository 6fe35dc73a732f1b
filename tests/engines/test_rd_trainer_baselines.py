"""RDTrainer's baseline modes: KD from a fixed teacher head, feature-distillation terms, direct reprogramming."""

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from monai_rd.engines import RDTrainer
from monai_rd.engines.rd_trainer import FEATURE_KD_KEY
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
    trainer = RDTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.1), loss,
                        teacher=teacher, teacher_head=head, decollate=False)
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
    trainer = RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher, feature_loss=fitnets,
                        feature_loss_weight=3.0, decollate=False)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append([float(e.state.output[k]) for k in (FEATURE_KD_KEY, "loss", "ce_student")]),
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
    trainer = RDTrainer("cpu", 1, _data()[:1], student, torch.optim.SGD(student.parameters(), lr=0.0), RDLoss(),
                        teacher=teacher, feature_loss=sp, decollate=False)
    trainer.run()  # lr 0: the weights after the step are those of the forward pass
    x = _data()[0]["image"]
    student.train()
    with torch.no_grad():
        expected = sp(student.backbone[:3](x), teacher(x))
    assert float(trainer.state.output[FEATURE_KD_KEY]) == pytest.approx(float(expected), rel=1e-5)


def test_feature_loss_parameters_outside_the_optimizer_are_refused():
    teacher, student = _parts()
    with pytest.raises(ValueError, match="does not hold the feature_loss's parameters"):
        RDTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.1), RDLoss(),
                  teacher=teacher, feature_loss=FitNetsLoss(4, 8))


def test_teacher_head_is_refused_with_phi_or_in_the_optimizer():
    teacher, student = _parts()
    phi, head = ReprogrammingNet(8, 4, num_blocks=0), LinearProbe(8, 2)
    opt = torch.optim.SGD([*student.parameters(), *phi.parameters()], lr=0.1)
    with pytest.raises(ValueError, match="not both"):
        RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher, reprogrammer=phi, teacher_head=head)
    opt = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=0.1)
    with pytest.raises(ValueError, match="frozen teacher head"):
        RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher, teacher_head=head)
    with pytest.raises(ValueError, match="direct_epochs=2 needs a reprogrammer"):
        RDTrainer("cpu", 1, _data(), student, torch.optim.SGD(student.parameters(), lr=0.1), RDLoss(),
                  teacher=teacher, teacher_head=LinearProbe(8, 2), direct_epochs=2)


def test_direct_reprogramming_fits_phi_and_head_first_then_keeps_them_frozen():
    teacher, student = _parts()
    phi = ReprogrammingNet(8, 4, num_blocks=1, block="bottleneck")
    opt = torch.optim.AdamW([*student.parameters(), *phi.parameters()], lr=0.05)
    trainer = RDTrainer("cpu", 2, _data(), student, opt, RDLoss(alpha=0.0), teacher=teacher, reprogrammer=phi,
                        direct_epochs=3)
    initial = (_snapshot(phi), _snapshot(student.head), _snapshot(student.backbone))
    after_direct = {}
    trainer.add_event_handler(
        Events.ITERATION_STARTED(once=1),
        lambda e: after_direct.update(phi=_snapshot(phi), head=_snapshot(student.head)),
    )
    trainer.run()
    assert not _same(initial[0], after_direct["phi"]) and not _same(initial[1], after_direct["head"])  # fitted first
    assert _same(after_direct["phi"], _snapshot(phi))  # then frozen, BatchNorm statistics included
    assert _same(after_direct["head"], _snapshot(student.head))
    assert not _same(initial[2], _snapshot(student.backbone))  # while the student learns
    assert not phi.training and not any(p.requires_grad for p in [*phi.parameters(), *student.head.parameters()])


def test_direct_stage_is_not_repeated_after_the_first_epoch():
    teacher, student = _parts()
    phi = ReprogrammingNet(8, 4, num_blocks=0)
    opt = torch.optim.AdamW([*student.parameters(), *phi.parameters()], lr=0.05)
    trainer = RDTrainer("cpu", 2, _data(), student, opt, RDLoss(), teacher=teacher, reprogrammer=phi, direct_epochs=1)
    before = _snapshot(phi)
    trainer.state.epoch = 2  # as after resuming from checkpoint_epoch=1.pt
    trainer._direct_reprogramming(trainer)
    assert _same(before, _snapshot(phi))
    trainer.state.epoch = 1
    trainer._direct_reprogramming(trainer)
    assert not _same(before, _snapshot(phi))
