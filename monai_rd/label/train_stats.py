"""``train_stats`` of a training started from MONAI Label: epoch, loss and validation metric, written every epoch.

MONAI Label's ``/info/`` answers each train task's ``stats()``; 3D Slicer's MONAI Label module shows its ``epoch``
of ``total_epochs`` as the training progress and ``best_metric`` as the model's accuracy. The training runs in a
subprocess of the server, so :class:`TrainStatsWriter` (MONAI Label's ``PublishStatsAndModel``, attached to the
trainer) writes them to a JSON file after each epoch's validation, and the train task reads that file.
"""

from __future__ import annotations

import time
from typing import Any

from monai.handlers import from_engine
from monailabel.tasks.train.handler import PublishStatsAndModel, prepare_stats

from monai_rd.data.datalist import write_json_atomic
from monai_rd.handlers.metrics_json import to_jsonable

__all__ = ["TrainStatsWriter"]


class TrainStatsWriter(PublishStatsAndModel):
    """Writes the run's statistics to ``stats_path`` after every epoch (it publishes no model: the train task
    decides that once the run is over).

    The file holds MONAI Label's statistics (``epoch``, ``total_epochs``, ``start_ts``, ``current_time`` or
    ``total_time``, ``best_metric`` and the evaluator's metrics under ``eval``) and ``loss`` (the epoch's mean
    training loss), ``key_metric`` (the validation key metric's name and last value) and ``history`` (one entry per
    epoch: ``epoch``, ``loss``, the key metric).

    Args:
        stats_path: the JSON file.
        trainer: the run's trainer (its output has a ``loss``).
        evaluator: the run's validation evaluator.
    """

    def __init__(self, stats_path: str, trainer: Any, evaluator: Any):
        super().__init__(stats_path, None, "model.pt", time.time(), "label", "", trainer, evaluator)
        self._loss_sum, self._loss_count = 0.0, 0
        self.history: list[dict[str, Any]] = []
        self._loss = from_engine(["loss"], first=True)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        super().attach(engine)

    def _add_loss(self, engine: Any) -> None:
        self._loss_sum += float(self._loss(engine.state.output))
        self._loss_count += 1

    def iteration_completed(self) -> dict[str, Any]:
        """The epoch's statistics, written to ``stats_path`` (called at each epoch's end)."""
        stats = prepare_stats(self.start_ts, self.trainer, self.evaluator)
        loss = self._loss_sum / max(1, self._loss_count)
        self._loss_sum, self._loss_count = 0.0, 0
        name = getattr(self.evaluator.state, "key_metric_name", None) if self.evaluator else None
        value = self.evaluator.state.metrics.get(name) if name else None
        self.history.append({"epoch": self.trainer.state.epoch, "loss": loss, **({name: value} if name else {})})
        stats.update(loss=loss, key_metric={"name": name, "value": value}, history=self.history)
        stats = to_jsonable(stats)
        write_json_atomic(stats, self._stats_path)
        return stats
