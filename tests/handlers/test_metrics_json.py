"""Metrics JSON is strict JSON: an undefined metric is null with a note, never a bare NaN."""

import json
import math

import torch
from ignite.engine import Engine, Events

from monai_rd.handlers import MetricsJSONWriter


def _evaluator(metrics):
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _(e):
        e.state.metrics = dict(metrics)

    return engine


def test_nan_is_written_as_null_with_a_note(tmp_path):
    path = tmp_path / "m.json"
    engine = _evaluator({"accuracy": 0.5, "auc": float("nan"), "recall_per_class": torch.tensor([1.0, float("nan")])})
    MetricsJSONWriter(str(path), class_names=["a", "b"]).attach(engine)
    engine.run([0], max_epochs=1)
    text = path.read_text()
    assert "NaN" not in text
    doc = json.loads(text, parse_constant=lambda c: math.nan)
    assert doc["final"]["auc"] is None and doc["final"]["recall_per_class"] == [1.0, None]
    assert set(doc["notes"]) == {"auc", "recall_per_class"}
    assert doc["final"]["accuracy"] == 0.5


def test_evaluation_records_no_best_epoch_and_history_survives_state_roundtrip(tmp_path):
    path = tmp_path / "test.json"
    engine = _evaluator({"accuracy": 0.75})
    MetricsJSONWriter(str(path), record_best=False).attach(engine)
    engine.run([0], max_epochs=1)
    doc = json.loads(path.read_text())
    assert "best_metric_epoch" not in doc and "epoch" not in doc["final"]

    writer = MetricsJSONWriter(str(tmp_path / "val.json"))
    writer.history = [{"epoch": 1, "accuracy": 0.1}]
    restored = MetricsJSONWriter(str(tmp_path / "val.json"))
    restored.load_state_dict(writer.state_dict())
    engine = _evaluator({"accuracy": 0.2})
    engine.state.epoch, engine.state.iteration, engine.state.max_epochs, engine.state.epoch_length = 1, 1, 1, 1
    restored.attach(engine)
    engine.run([0], max_epochs=2)
    assert [h["epoch"] for h in json.loads((tmp_path / "val.json").read_text())["history"]] == [1, 2]
