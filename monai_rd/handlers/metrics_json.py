"""Write an engine's metrics to a JSON file after every epoch, atomically."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_rd.data.datalist import write_json_atomic

__all__ = ["MetricsJSONWriter", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Tensors and arrays to (nested) lists and Python numbers; other values unchanged or as strings."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


class MetricsJSONWriter:
    """Keeps every epoch's ``engine.state.metrics`` and the best key metric in one JSON file.

    Attach to an evaluator: each of its runs appends the metrics under its epoch (a MONAI evaluator run by
    ``ValidationHandler`` carries the trainer's epoch) and rewrites the file through a temporary file and a
    rename.

    Args:
        filename: output JSON path.
        class_names: written beside the metrics so per-class values and the confusion matrix can be read.
        extra: additional fields written at the top level (e.g. the split or the configuration).
    """

    def __init__(
        self,
        filename: str,
        class_names: list[str] | None = None,
        extra: dict | None = None,
    ) -> None:
        self.filename = filename
        self.class_names = class_names
        self.extra = extra or {}
        self.history: list[dict] = []

    def attach(self, engine: Engine) -> None:
        """Register the writer on ``engine``'s EPOCH_COMPLETED."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        entry = {"epoch": engine.state.epoch, **to_jsonable(dict(engine.state.metrics))}
        self.history.append(entry)
        doc = {
            **to_jsonable(self.extra),
            "class_names": self.class_names,
            "key_metric": getattr(engine.state, "key_metric_name", None),
            "best_metric": to_jsonable(getattr(engine.state, "best_metric", None)),
            "best_metric_epoch": getattr(engine.state, "best_metric_epoch", None),
            "final": entry,
            "history": self.history,
        }
        write_json_atomic(doc, self.filename)
