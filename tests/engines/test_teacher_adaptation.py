"""The teacher-adaptation stage: which weights change, selection on validation, freezing, cache keys, RNG, KD target."""

import logging

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.transforms import RandFlipd

from monai_rd.data import TeacherFeatureCache
from monai_rd.engines import KDTrainer, adapt_teacher
from monai_rd.losses import DistillKLLoss, RDLoss
from monai_rd.networks import AdaptedTeacherClassifier, FrozenTeacher, StudentClassifier
from monai_rd.networks.linear_probe import LinearProbe


def _teacher(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU())
    return FrozenTeacher(model, input_size=(12, 12), mean=(0.5,) * 3, std=(0.5,) * 3, name="tiny")


def _datalist(n=(12, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, k in zip(("training", "validation"), n):
        y = torch.arange(k) % 2
        x = torch.rand(k, 1, 12, 12, generator=g) * 0.8 + y[:, None, None, None] * 0.1  # brighter = class 1
        out[split] = [{"image": x[i], "label": int(y[i])} for i in range(k)]
    return out


def _identity(item):
    return dict(item)


def _adapt(mode, epochs=3, **kw):
    classifier = AdaptedTeacherClassifier(_teacher(), LinearProbe(8, 2), mode, lora_rank=2)
    return adapt_teacher(classifier, _datalist(), _identity, [RandFlipd(keys="image", prob=0.5, spatial_axis=1)],
                         epochs=epochs, lr=kw.pop("lr", 0.05), batch_size=4, **kw)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lora_trains_only_the_adapters_and_the_head_then_freezes_and_moves_the_cache_key():
    """Catches adapting the wrong parameters (base weights or BatchNorm statistics) and a stale feature cache."""
    base = _teacher()
    base_state, base_key = _state(base.model), TeacherFeatureCache(base, _identity).config_id
    classifier = AdaptedTeacherClassifier(_teacher(), LinearProbe(8, 2), "lora", lora_rank=2)
    lora_start = {k: v.clone() for k, v in classifier.state_dict().items() if "lora_" in k}
    adapt_teacher(classifier, _datalist(), _identity, epochs=3, lr=0.05, batch_size=4,
                  probe_first=False)  # from a zero head: epoch 0 is at chance, adapting beats it
    adapted = classifier.teacher.model.state_dict()
    for k, v in base_state.items():  # peft moved each adapted layer's own weights under base_layer
        assert torch.equal(adapted[k if k in adapted else k.replace(".weight", ".base_layer.weight")
                                   .replace(".bias", ".base_layer.bias")], v), k
    assert any(not torch.equal(classifier.state_dict()[k], v) for k, v in lora_start.items())
    assert not any(p.requires_grad for p in classifier.parameters()) and not classifier.training
    assert TeacherFeatureCache(classifier.teacher, _identity).config_id != base_key


def test_finetune_changes_the_teacher_weights_but_not_its_batchnorm_statistics():
    """Catches a finetune that trains only the head, and BatchNorm running statistics drifting (teacher in eval)."""
    base = _teacher().model.state_dict()
    classifier = _adapt("finetune", lr=0.01, probe_first=False)  # from a zero head: epoch 0 is at chance
    adapted = classifier.teacher.model.state_dict()
    assert not torch.equal(adapted["0.weight"], base["0.weight"])
    assert not torch.equal(adapted["3.weight"], base["3.weight"])
    assert torch.equal(adapted["1.running_mean"], base["1.running_mean"])
    assert not any(p.requires_grad for p in classifier.parameters())


def test_the_state_kept_is_the_epoch_with_the_lowest_validation_loss():
    """Catches keeping the last epoch instead of the best one on validation."""
    losses = []
    handler = _LossRecorder(losses)
    logger = logging.getLogger("monai_rd.engines.teacher_adaptation")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        classifier = _adapt("finetune", epochs=4, lr=0.003)  # the validation loss rises again in the last epoch
    finally:
        logger.removeHandler(handler)
    data = _datalist()["validation"]
    x = torch.stack([it["image"] for it in data])
    y = torch.tensor([it["label"] for it in data])
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(classifier(x), y))
    assert len(losses) == 5 and losses[-1] > min(losses)  # epoch 0 (the linear probe) and 4 adapted epochs
    assert final == pytest.approx(min(losses), abs=6e-5)  # logged to 4 decimals


def test_an_adaptation_that_never_beats_the_linear_probe_on_validation_is_undone():
    """Catches deploying (or distilling) a teacher that adaptation made worse than the probe it started from."""
    base = _teacher().model.state_dict()
    classifier = _adapt("finetune", epochs=2, lr=1.0)  # a learning rate that wrecks the features
    assert all(torch.equal(v, base[k]) for k, v in classifier.teacher.model.state_dict().items())


class _LossRecorder(logging.Handler):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def emit(self, record):
        msg = record.getMessage()
        if "validation loss" in msg:
            self.out.append(float(msg.split("validation loss ")[1].split(" ")[0]))


def test_adaptation_draws_no_random_numbers_of_the_run():
    """Catches the student starting, shuffling or augmenting differently from the other methods."""
    classifier = AdaptedTeacherClassifier(_teacher(), LinearProbe(8, 2), "lora", lora_rank=2)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    adapt_teacher(classifier, _datalist(), _identity, [RandFlipd(keys="image", prob=0.5, spatial_axis=1)], epochs=1,
                  batch_size=4)
    assert torch.equal(torch.rand(4), expected)


def test_lora_kd_distils_the_adapted_teachers_logits():
    """Catches KD from the unadapted teacher (or the probe before adaptation) instead of the adapted one."""
    classifier = _adapt("lora", epochs=3, probe_first=False)
    unadapted = AdaptedTeacherClassifier(_teacher(), LinearProbe(8, 2), "lora", lora_rank=2)
    unadapted.probe.load_state_dict(classifier.probe.state_dict())
    batches = [{"image": torch.stack([it["image"] for it in _datalist()["training"][i : i + 4]]),
                "label": torch.tensor([it["label"] for it in _datalist()["training"][i : i + 4]])} for i in (0, 4, 8)]
    assert not torch.allclose(unadapted(batches[0]["image"]), classifier(batches[0]["image"]))
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student = StudentClassifier(backbone, num_classes=2, num_features=4)
    trainer = KDTrainer("cpu", 1, batches, student, torch.optim.SGD(student.parameters(), lr=0.1),
                        RDLoss(alpha=0.0, gamma=0.0), teacher=classifier.teacher, teacher_head=classifier.probe,
                        decollate=False)
    seen = []

    def check(engine):
        with torch.no_grad():
            target = classifier(engine.state.output["image"])  # the deployed adapted teacher + head
        expected = DistillKLLoss()(engine.state.output["pred"].detach(), target)
        seen.append((float(engine.state.output["kd"]), float(expected)))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
    trainer.run()
    assert len(seen) == 3 and all(a == pytest.approx(b, rel=1e-5) and a > 0 for a, b in seen)


def test_a_cache_built_before_the_teacher_was_adapted_refuses_to_serve_it(tmp_path):
    """Catches stale features: cache rows of the unadapted teacher kept after the teacher changed in place."""
    import numpy as np
    from monai.transforms import Compose, LoadImaged, ScaleIntensityd
    from PIL import Image

    items = []
    for i, it in enumerate(_datalist()["training"][:6]):
        Image.fromarray((it["image"][0].numpy() * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png"), "label": it["label"]})
    load = Compose(
        [LoadImaged(keys="image", ensure_channel_first=True, image_only=True), ScaleIntensityd(keys="image")]
    )
    classifier = AdaptedTeacherClassifier(_teacher(), LinearProbe(8, 2), "finetune")
    cache = TeacherFeatureCache(classifier.teacher, load).build(items[:4])
    cache.build(items[:5])  # the same teacher: more rows are fine
    with torch.no_grad():
        classifier.teacher.model[0].weight.add_(0.1)  # what adapt_teacher does, in place
    with pytest.raises(RuntimeError, match="weights changed since this cache was built"):
        cache.build(items)
