"""Write an engine's metrics to a JSON file after every epoch, atomically, as strict JSON."""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_rd.utils.files import write_json_atomic

__all__ = ["MetricsJSONWriter", "to_jsonable"]

NON_FINITE_NOTE = (
    "not finite, written as null: the metric is undefined on this split (e.g. ROC-AUC or recall of a class with no "
    "sample in it) or the model's outputs were not finite"
)


def to_jsonable(value: Any) -> Any:
    """Tensors and arrays to (nested) lists and Python numbers; NaN and infinities to None; other values as strings."""
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)


def _has_non_finite(value: Any) -> bool:
    t = torch.as_tensor(value) if isinstance(value, (int, float, list, tuple, torch.Tensor)) else None
    return t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())


class MetricsJSONWriter:
    """Keeps every epoch's ``engine.state.metrics`` (and, for validation, the best key metric) in one JSON file.

    Attach to an evaluator: each of its runs appends the metrics under its epoch (a MONAI evaluator run by
    ``ValidationHandler`` carries the trainer's epoch) and rewrites the file through a temporary file and a
    rename. The file is strict JSON: a non-finite value is written as ``null`` and named under ``"notes"``.

    Args:
        filename: output JSON path.
        class_names: written beside the metrics so per-class values and the confusion matrix can be read.
        extra: additional fields written at the top level (e.g. the split or the configuration).
        record_best: write the evaluator's best key metric and its epoch (validation during training); False for
            a one-off evaluation, where "best" and "epoch" mean nothing.
    """

    rank0_only = True  # writes files: one process of a torchrun job does (see monai_rd.bundle.distributed)

    def __init__(
        self,
        filename: str,
        class_names: list[str] | None = None,
        extra: dict | None = None,
        record_best: bool = True,
    ) -> None:
        self.filename = filename
        self.class_names = list(class_names) if class_names is not None else None
        self.extra = extra or {}
        self.record_best = record_best
        self.history: list[dict] = []

    def attach(self, engine: Engine) -> None:
        """Register the writer on ``engine``'s EPOCH_COMPLETED."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict:
        """The metric history, so a resumed run keeps its earlier epochs (see :class:`~monai_rd.handlers.RunState`)."""
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        """Restore the history saved by :meth:`state_dict`."""
        self.history = list(state["history"])

    def __call__(self, engine: Engine) -> None:
        metrics = dict(engine.state.metrics)
        notes = {k: NON_FINITE_NOTE for k, v in metrics.items() if _has_non_finite(v)}
        entry = {"epoch": engine.state.epoch, **to_jsonable(metrics)}
        if not self.record_best:
            entry.pop("epoch")
        self.history.append(entry)
        doc: dict[str, Any] = {
            **to_jsonable(self.extra),
            "class_names": self.class_names,
            "key_metric": getattr(engine.state, "key_metric_name", None),
        }
        if self.record_best:
            doc.update(
                best_metric=to_jsonable(getattr(engine.state, "best_metric", None)),
                best_metric_epoch=getattr(engine.state, "best_metric_epoch", None),
            )
        doc.update(final=entry, history=self.history if self.record_best else [entry])
        if notes:
            doc["notes"] = notes
        write_json_atomic(doc, self.filename)
