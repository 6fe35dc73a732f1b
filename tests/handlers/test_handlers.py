import json

import pytest
import torch
from ignite.engine import Engine, Events

from monai_rd.handlers import MetricsJSONWriter, TrainingCurvePlotter, loss_terms_from_engine, stacked_from_engine


def test_stacked_from_engine_for_decollated_outputs():
    out = [
        {"pred": torch.tensor([0.1, 0.9]), "label": torch.tensor([1])},
        {"pred": torch.tensor([0.8, 0.2]), "label": torch.tensor([0])},
    ]
    pred, label = stacked_from_engine()(out)
    assert pred.shape == (2, 2) and label.tolist() == [1, 0]
    _, onehot = stacked_from_engine(onehot_label=2)(out)
    assert onehot.tolist() == [[0, 1], [1, 0]]
    multi = [{"pred": torch.rand(3), "label": torch.tensor([1.0, 0.0, 1.0])}] * 2
    assert stacked_from_engine()(multi)[1].shape == (2, 3)


def test_loss_terms_from_engine():
    out = [{"loss": torch.tensor(2.0), "kd": torch.tensor(0.5)}] * 3
    assert loss_terms_from_engine(["loss", "kd"])(out) == {"loss": 2.0, "kd": 0.5}


def _engine(values):
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b)), "kd": torch.tensor(float(b) / 2)})

    @engine.on(Events.EPOCH_COMPLETED)
    def _metrics(e):
        e.state.metrics = {"accuracy": 0.5 + 0.1 * e.state.epoch, "confusion_matrix": torch.eye(2)}
        e.state.best_metric, e.state.best_metric_epoch = 0.5 + 0.1 * e.state.epoch, e.state.epoch

    return engine


def test_metrics_json_writer_keeps_history(tmp_path):
    engine = _engine([1, 2])
    f = tmp_path / "m.json"
    MetricsJSONWriter(str(f), class_names=["x", "y"], extra={"split": "validation"}).attach(engine)
    engine.run([1, 2], max_epochs=2)
    doc = json.load(open(f))
    assert [h["epoch"] for h in doc["history"]] == [1, 2]
    assert doc["final"]["confusion_matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    assert doc["split"] == "validation" and doc["best_metric_epoch"] == 2
    assert abs(doc["best_metric"] - 0.7) < 1e-9


def test_training_curve_averages_epoch_losses_and_writes_png(tmp_path):
    trainer, evaluator = _engine([]), _engine([])
    plot = TrainingCurvePlotter(str(tmp_path / "c.png"), loss_keys=["loss", "kd"], evaluator=evaluator)
    plot.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([1, 3], max_epochs=2)
    assert plot.losses["loss"] == [2.0, 2.0] and plot.losses["kd"] == [1.0, 1.0]
    assert plot.metrics["accuracy"] == pytest.approx([0.6, 0.6])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
