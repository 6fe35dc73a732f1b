import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointSaver, ParamSchedulerHandler
from monai.transforms import Compose, CopyItemsd, EnsureTyped, LoadImaged

from monai_rd.data import CachedTeacherFeaturesd, TeacherFeatureCache
from monai_rd.engines import DistillationTrainer, RDTrainer
from monai_rd.errors import NonFiniteError
from monai_rd.losses import RDLoss
from monai_rd.networks import FrozenTeacher, ReprogrammingNet, StudentClassifier

TERMS = ("loss", "ce_student", "ce_teacher", "kd", "cka")
RD_OUTPUT_KEYS = (*TERMS, "alpha", "beta")


def _data(n=24, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    return [{"image": x[i : i + b], "label": y[i : i + b]} for i in range(0, n, b)]


def _backbone(*extra):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), *extra
    )


def _parts(seed=0, backbone=None):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        input_size=(12, 12),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    student = StudentClassifier(backbone or _backbone(), num_classes=2, num_features=8)
    phi = ReprogrammingNet(8, 8, num_blocks=1, block="bottleneck")
    return teacher, student, phi


def _trainer(data, teacher, student, phi, epochs=2, lr=0.1, loss=None, **kwargs):
    params = list(student.parameters()) + (list(phi.parameters()) if phi is not None else [])
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    if phi is None:  # the student alone
        return DistillationTrainer("cpu", epochs, data, student, opt, loss or RDLoss(), teacher=teacher, **kwargs)
    return RDTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=data,
        network=student,
        optimizer=opt,
        loss_function=loss or RDLoss(),
        teacher=teacher,
        reprogrammer=phi,
        **kwargs,
    )


def _record(trainer):
    """Each iteration's loss terms, as floats."""
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append({k: float(e.state.output[k]) for k in TERMS})
    )
    return seen


def _image_files(folder, n=12, nan_at=None):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = rng.random((1, 16, 16), dtype=np.float32)
        if i == nan_at:
            img[0, 3, 5] = np.nan
        path = folder / f"img{i}.npy"
        np.save(path, img)
        items.append({"image": str(path), "label": i % 2})
    return items


def _loader(items, *transforms):
    return DataLoader(Dataset(items, Compose([*transforms])), batch_size=6, shuffle=False)


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


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


def test_plain_module_teacher_is_frozen_even_when_a_handler_sets_it_to_train():
    _, student, phi = _parts()
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(_data(), teacher, student, phi, epochs=2)
    # a handler putting "everything" in train mode before each iteration must not let BatchNorm stats move
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: e.teacher.train())
    trainer.run()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_optimizer_holding_teacher_parameters_is_refused_with_their_names():
    _, student, phi = _parts()
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    opt = torch.optim.SGD([*student.parameters(), *phi.parameters(), *teacher.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"frozen teacher \(0\.weight, 0\.bias, 1\.weight, 1\.bias\)"):
        RDTrainer("cpu", 1, _data(), student, opt, RDLoss(), teacher=teacher, reprogrammer=phi)


def test_output_terms_equal_the_loss_recomputed_on_the_batch():
    teacher, student, phi = _parts()
    data = _data(n=6, b=6)
    trainer = _trainer(data, teacher, student, phi, epochs=1, lr=0.0, decollate=False)  # weights stay put
    trainer.run()
    out = trainer.state.output
    x, y = data[0]["image"], data[0]["label"]
    with torch.no_grad():  # student and Phi are still in train mode, so BatchNorm uses the same batch statistics
        z_s, z_t = student.forward_features(x), phi(teacher(x))
        logits_s = student.classify(z_s)
        expected = RDLoss()(logits_s, y, student.classify(z_t), z_s, z_t)
    assert torch.allclose(out["pred"], logits_s, atol=1e-6) and torch.equal(out["label"], y)
    for k in TERMS:
        assert out[k].item() == pytest.approx(expected[k].item(), rel=1e-5, abs=1e-7), k
    assert set(RD_OUTPUT_KEYS) <= set(out)
    assert (out["alpha"].item(), out["beta"].item()) == (1.0, 1.0)


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


def test_precomputed_features_skip_the_teacher_and_train_as_the_live_teacher_does():
    teacher, student, phi = _parts()
    live = _trainer(_data(), teacher, student, phi, epochs=2, decollate=False)
    live_terms = _record(live)
    live.run()

    teacher, student, phi = _parts()
    data = _data()
    for batch in data:
        batch["teacher_features"] = teacher(batch["image"])

    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("teacher must not run when features are in the batch")

    trainer = _trainer(data, None, student, phi, epochs=2, decollate=False)
    trainer.features.teacher = Exploding()
    terms = _record(trainer)
    trainer.run()
    assert len(terms) == len(live_terms) == 8
    for got, ref in zip(terms, live_terms):
        assert got == pytest.approx(ref, rel=1e-5)


class _OneTerm(RDLoss):
    """RDLoss whose total is one of its terms, to trace where that term's gradient goes."""

    def __init__(self, term, **kwargs):
        super().__init__(**kwargs)
        self.term = term

    def forward(self, *args):
        out = super().forward(*args)
        return {**out, "loss": out[self.term]}


@pytest.mark.parametrize(
    "term, detach_teacher, reached",
    [
        ("ce_student", True, {"backbone", "head"}),
        ("ce_teacher", True, {"head", "phi"}),  # through the shared head into Phi
        ("kd", True, {"backbone", "head"}),  # the teacher branch is detached
        ("kd", False, {"backbone", "head", "phi"}),
        ("cka", True, {"backbone", "phi"}),  # features of both branches, not the head
    ],
)
def test_each_term_sends_gradient_exactly_where_rd_says(term, detach_teacher, reached):
    teacher, student, phi = _parts()
    loss = _OneTerm(term, detach_teacher=detach_teacher)
    trainer = _trainer(_data(n=6, b=6), teacher, student, phi, epochs=1, lr=0.0, loss=loss, decollate=False)
    trainer.run()
    groups = {"backbone": student.backbone, "head": student.head, "phi": phi}
    got = {
        name
        for name, module in groups.items()
        if any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in module.parameters())
    }
    assert got == reached


def test_accumulation_and_clipping_step_only_at_boundaries():
    teacher, student, phi = _parts()
    data = _data(n=24, b=6)  # 4 iterations
    trainer = _trainer(
        data, teacher, student, phi, epochs=1, accumulation_steps=2, grad_clip_norm=1e-3, decollate=False
    )
    steps = []
    orig = trainer.optimizer.step

    def counting_step(*a, **k):
        grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
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
        RDTrainer("cpu", 1, _data(), nn.Linear(2, 2), opt, RDLoss(), reprogrammer=phi)
    with pytest.raises(ValueError, match="RDLoss"):
        RDTrainer("cpu", 1, _data(), student, opt, nn.CrossEntropyLoss(), reprogrammer=phi)


def test_real_feature_cache_trains_as_the_live_teacher_and_never_moves_the_teacher(tmp_path, monkeypatch):
    items = _image_files(tmp_path)
    load = LoadImaged(keys="image", reader="NumpyReader", image_only=True)

    teacher, student, phi = _parts()
    live = _trainer(_loader(items, load), teacher, student, phi, epochs=2, decollate=False)
    live_terms = _record(live)
    live.run()

    teacher, student, phi = _parts()
    cache = TeacherFeatureCache(teacher, transform=load, dtype=torch.float32, batch_size=6).build(items)
    moves = []

    def spy_to(*args, **kwargs):
        moves.append((args, kwargs))
        return nn.Module.to(teacher, *args, **kwargs)

    monkeypatch.setattr(teacher, "to", spy_to)
    cached_loader = _loader(items, load, CachedTeacherFeaturesd(keys="image", cache=cache, output="index"))
    trainer = _trainer(cached_loader, teacher, student, phi, epochs=2, decollate=False, feature_cache=cache)
    terms = _record(trainer)
    trainer.run()
    assert len(terms) == len(live_terms) == 4
    for got, ref in zip(terms, live_terms):
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert moves == []  # the cache served every batch: the teacher was never moved
    # a batch without cached rows needs the live teacher: moved once, then run
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(trainer.teacher_features({"image": x}, x), teacher(x))
    assert len(moves) == 1

    no_cache = _trainer(cached_loader, None, student, phi, epochs=1, decollate=False)
    with pytest.raises(ValueError, match="feature_cache"):
        no_cache.run()


@pytest.mark.parametrize("names_from", ["source_key", "meta", "nowhere"])
def test_nan_pixel_stops_at_iteration_one_naming_the_file_and_the_terms(tmp_path, names_from):
    items = _image_files(tmp_path, nan_at=4)
    nan_file = items[4]["image"]
    load = LoadImaged(keys="image", reader="NumpyReader", image_only=True)
    if names_from == "source_key":  # the bundles' pipeline: paths copied before loading, metadata dropped
        copy = CopyItemsd(keys="image", names="image_path")
        data = _loader(items, copy, load, EnsureTyped("image", track_meta=False))
    elif names_from == "meta":
        data = _loader(items, load)
    else:
        data = [{"image": b["image"].as_tensor(), "label": b["label"]} for b in _loader(items, load)]
    teacher, student, phi = _parts()
    before = _params(student)
    trainer = _trainer(data, teacher, student, phi, epochs=1, decollate=False)
    with pytest.raises(NonFiniteError) as err:
        trainer.run()
    msg = str(err.value)
    assert "non-finite loss at iteration 1 (epoch 1" in msg
    for term in ("ce_student=nan", "ce_teacher=", "kd=", "cka=", "alpha=1", "beta=1"):
        assert term in msg, term
    if names_from == "nowhere":
        assert "file names are unknown" in msg and "samples [4]" in msg
    else:
        assert f"NaN/Inf input values in: {nan_file}" in msg and items[0]["image"] in msg
    # stopped before backward and the optimizer step
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in student.named_parameters())


@pytest.mark.parametrize("lr", [1e10, 1e30, float("inf")])
def test_divergence_stops_before_any_handler_saves_non_finite_weights(tmp_path, lr):
    # 1e10: BatchNorm statistics overflow at iteration 2; 1e30: the loss is NaN at iteration 2; inf: the weights
    # are NaN right after the first step
    teacher, student, phi = _parts()
    trainer = _trainer(_data(), teacher, student, phi, epochs=3, lr=lr, decollate=False)
    CheckpointSaver(
        str(tmp_path), {"network": student, "reprogrammer": phi}, save_interval=1, epoch_level=False, n_saved=None
    ).attach(trainer)
    with pytest.raises(NonFiniteError):
        trainer.run()
    saved = sorted(tmp_path.glob("*.pt"))
    assert len(saved) == trainer.state.iteration - 1  # every completed iteration, not the failing one
    for f in saved:
        for part in torch.load(f, weights_only=True).values():
            for k, v in part.items():
                assert not v.is_floating_point() or bool(torch.isfinite(v).all()), (f.name, k)


def test_non_finite_weights_name_the_first_bad_tensor_and_the_learning_rate():
    teacher, student, phi = _parts()
    trainer = _trainer(_data(), teacher, student, phi, epochs=1, lr=float("inf"), decollate=False)
    completed = _record(trainer)
    expected = r"non-finite weights .* iteration 1 .*'network\.backbone\.0\.weight' \(learning rate inf\)"
    with pytest.raises(NonFiniteError, match=expected):
        trainer.run()
    assert completed == []


class _InfGrad(torch.autograd.Function):
    """Identity whose backward returns infinite gradients: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _InfGradLayer(nn.Module):
    def forward(self, x):
        return _InfGrad.apply(x)


@pytest.mark.parametrize("clip, match", [(1.0, "non-finite gradient norm"), (None, "non-finite weights")])
def test_non_finite_gradients_stop_the_run(clip, match):
    teacher, student, phi = _parts(backbone=_backbone(_InfGradLayer()))
    before = _params(student)
    trainer = _trainer(_data(), teacher, student, phi, epochs=1, grad_clip_norm=clip, decollate=False)
    with pytest.raises(NonFiniteError, match=match):
        trainer.run()
    assert trainer.state.iteration == 1
    if clip is not None:  # found before the optimizer step
        assert all(torch.equal(v, before[k]) for k, v in student.named_parameters())


def test_amp_grad_scaler_skipping_inf_gradient_steps_is_not_an_error():
    teacher, student, phi = _parts(backbone=_backbone(_InfGradLayer()))
    before = _params(student)
    trainer = _trainer(_data(), teacher, student, phi, epochs=1, grad_clip_norm=1.0, decollate=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def use_cpu_scaler(engine):  # Trainer.run() makes a CUDA-only scaler; swap in a CPU one once running
        engine.amp, engine.scaler = True, scaler

    trainer.add_event_handler(Events.STARTED, use_cpu_scaler)
    trainer.run()  # 4 iterations, every step skipped by the scaler, no error
    assert trainer.state.iteration == 4
    assert scaler.get_scale() == 2.0**6  # halved at each skipped step
    assert all(torch.equal(v, before[k]) for k, v in student.named_parameters())
