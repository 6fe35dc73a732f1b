import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from monai.handlers import ParamSchedulerHandler
from monai_rd.engines import RD_OUTPUT_KEYS, RDTrainer
from monai_rd.losses import RDLoss
from monai_rd.networks import FrozenTeacher, ReprogrammingNet, StudentClassifier


def _data(n=24, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    return [{"image": x[i : i + b], "label": y[i : i + b]} for i in range(0, n, b)]


def _parts(seed=0):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        input_size=(12, 12),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student = StudentClassifier(backbone, num_classes=2, num_features=8)
    phi = ReprogrammingNet(8, 8, num_blocks=1, block="bottleneck")
    return teacher, student, phi


def _trainer(data, teacher, student, phi, epochs=2, **kwargs):
    params = list(student.parameters()) + (list(phi.parameters()) if phi is not None else [])
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return RDTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=data,
        network=student,
        optimizer=opt,
        loss_function=RDLoss(),
        teacher=teacher,
        reprogrammer=phi,
        **kwargs,
    )


def test_teacher_is_bit_identical_and_never_gets_gradients():
    teacher, student, phi = _parts()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_student = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = _trainer(_data(), teacher, student, phi)
    trainer.run()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running stats untouched
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.model.training
    # the student did learn, so the test is not vacuous
    assert any(not torch.equal(v, before_student[k]) for k, v in student.state_dict().items())
    assert all(p.grad is not None for p in phi.parameters())


def test_output_has_pred_label_and_every_term():
    teacher, student, phi = _parts()
    trainer = _trainer(_data(), teacher, student, phi, epochs=1, decollate=False)
    trainer.run()
    out = trainer.state.output
    assert out["pred"].shape == (6, 2) and out["label"].shape == (6,)
    for k in RD_OUTPUT_KEYS:
        assert k in out and torch.isfinite(torch.as_tensor(out[k]))
    expected = out["ce_student"] + out["alpha"] * out["ce_teacher"] + out["beta"] * out["kd"] + out["cka"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["ce_teacher"] > 0 and out["kd"] >= 0


def test_alpha_beta_follow_param_scheduler_linear_decay():
    teacher, student, phi = _parts()
    data = _data()
    trainer = _trainer(data, teacher, student, phi, epochs=2, decollate=False)
    total = 2 * len(data)
    for name in ("alpha", "beta"):
        ParamSchedulerHandler(
            parameter_setter=(lambda n: lambda v: setattr(trainer.loss_function, n, v))(name),
            value_calculator="linear",
            vc_kwargs={"initial_value": 1.0, "step_constant": 0, "step_max_value": total, "max_value": 0.0},
            name=name,
        ).attach(trainer)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append((e.state.output["alpha"].item(), e.state.output["beta"].item())),
    )
    trainer.run()
    # the value used at iteration i (1-based) was set after iteration i-1
    expected = [1.0 - (i - 1) / total for i in range(1, total + 1)]
    assert [a for a, _ in seen] == pytest.approx(expected)
    assert [b for _, b in seen] == pytest.approx(expected)
    assert trainer.loss_function.alpha == pytest.approx(0.0)


def test_student_alone_trains_with_ce_only():
    _, student, _ = _parts()
    trainer = _trainer(_data(), None, student, None, epochs=1, decollate=False)
    trainer.run()
    out = trainer.state.output
    assert out["loss"].item() == pytest.approx(out["ce_student"].item())
    assert out["kd"].item() == 0 and out["cka"].item() == 0


def test_precomputed_features_skip_the_teacher():
    teacher, student, phi = _parts()
    data = _data()
    for batch in data:
        batch["teacher_features"] = teacher(batch["image"])

    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("teacher must not run when features are in the batch")

    trainer = _trainer(data, None, student, phi, epochs=1, decollate=False)
    trainer.teacher = Exploding()
    trainer.run()
    assert trainer.state.output["kd"].item() >= 0 and trainer.state.output["ce_teacher"].item() > 0


def test_accumulation_and_clipping_step_only_at_boundaries():
    teacher, student, phi = _parts()
    data = _data(n=24, b=6)  # 4 iterations
    trainer = _trainer(data, teacher, student, phi, epochs=1, accumulation_steps=2, grad_clip_norm=1e-3, decollate=False)
    steps = []
    orig = trainer.optimizer.step

    def counting_step(*a, **k):
        norm = torch.sqrt(sum((p.grad**2).sum() for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None))
        steps.append(norm.item())
        return orig(*a, **k)

    trainer.optimizer.step = counting_step
    trainer.run()
    assert len(steps) == 2
    assert all(n <= 1e-3 * 1.001 for n in steps)


def test_constructor_validates_parts():
    teacher, student, phi = _parts()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reprogrammer's parameters"):
        RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher, reprogrammer=phi)
    with pytest.raises(ValueError, match="needs a reprogrammer"):
        RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher)
    with pytest.raises(ValueError, match="forward_features"):
        RDTrainer("cpu", 1, _data(), nn.Linear(2, 2), opt, RDLoss())
    with pytest.raises(ValueError, match="RDLoss"):
        RDTrainer("cpu", 1, _data(), student, opt, nn.CrossEntropyLoss())


def test_cache_rows_are_gathered_from_the_feature_cache():
    teacher, student, phi = _parts()
    data = _data()
    feats = torch.cat([teacher(b["image"]) for b in data])

    class Table:
        def gather(self, rows, device):
            return feats[rows.long()].to(device)

    for i, batch in enumerate(data):
        batch["teacher_feature_index"] = torch.arange(i * 6, i * 6 + 6)
    trainer = _trainer(data, None, student, phi, epochs=1, decollate=False, feature_cache=Table())
    trainer.run()
    assert trainer.state.output["ce_teacher"].item() > 0
    no_cache = _trainer(data, None, student, phi, epochs=1, decollate=False)
    with pytest.raises(ValueError, match="feature_cache"):
        no_cache.run()
