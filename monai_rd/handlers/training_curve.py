"""Plot the training curve (per-epoch loss terms and validation metrics) to a PNG."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

__all__ = ["TrainingCurvePlotter"]


class TrainingCurvePlotter:
    """Records the epoch means of the trainer's loss terms and an evaluator's scalar metrics; redraws a PNG
    once per epoch and at the end (written atomically).

    Args:
        filename: output PNG path.
        loss_keys: trainer output keys to average per epoch (e.g. the RD terms).
        evaluator: validation engine whose scalar metrics are plotted beside the losses.
        metric_names: evaluator metrics to plot (default: all scalar ones).
    """

    rank0_only = True  # writes files: one process of a torchrun job does (see monai_rd.bundle.distributed)

    def __init__(
        self,
        filename: str,
        loss_keys: Sequence[str] = ("loss",),
        evaluator: Engine | None = None,
        metric_names: Sequence[str] | None = None,
    ) -> None:
        self.filename = filename
        self.loss_keys = list(loss_keys)
        self.evaluator = evaluator
        self.metric_names = metric_names
        self._getter = from_engine(self.loss_keys, first=True)
        self._sums: dict[str, float] = {}
        self._count = 0
        self.losses: dict[str, list[float]] = {k: [] for k in self.loss_keys}
        self.loss_epochs: list[int] = []
        self.metrics: dict[str, list[float]] = {}
        self.metric_epochs: list[int] = []
        self._trainer: Engine | None = None

    def state_dict(self) -> dict:
        """The recorded curves, so a resumed run draws the whole run (see :class:`~monai_rd.handlers.RunState`)."""
        return {"losses": self.losses, "loss_epochs": self.loss_epochs, "metrics": self.metrics,
                "metric_epochs": self.metric_epochs}

    def load_state_dict(self, state: dict) -> None:
        """Restore curves recorded by :meth:`state_dict`."""
        self.losses = {k: list(state["losses"].get(k, [])) for k in self.loss_keys}
        self.loss_epochs = list(state["loss_epochs"])
        self.metrics = {k: list(v) for k, v in state["metrics"].items()}
        self.metric_epochs = list(state["metric_epochs"])

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer (and to the evaluator's EPOCH_COMPLETED when one was given)."""
        self._trainer = engine
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)
        # the last validation may run after this handler's EPOCH_COMPLETED, depending on attach order
        engine.add_event_handler(Events.COMPLETED, lambda _: self.plot())
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._validation_done)

    def _reset(self, engine: Engine) -> None:
        self._sums = {k: 0.0 for k in self.loss_keys}
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        for k, v in zip(self.loss_keys, self._getter(engine.state.output)):
            self._sums[k] += float(torch.as_tensor(v).float().mean())
        self._count += 1

    def _epoch_done(self, engine: Engine) -> None:
        for k in self.loss_keys:
            self.losses[k].append(self._sums[k] / max(self._count, 1))
        self.loss_epochs.append(engine.state.epoch)
        self.plot()

    def _validation_done(self, evaluator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else evaluator.state.epoch
        names = self.metric_names or [
            k for k, v in evaluator.state.metrics.items() if torch.as_tensor(v).numel() == 1
        ]
        for k in names:
            if k in evaluator.state.metrics:
                self.metrics.setdefault(k, []).append(float(torch.as_tensor(evaluator.state.metrics[k])))
        self.metric_epochs.append(epoch)

    def _base_metric(self, name: str) -> str | None:
        """The plotted metric ``m`` that ``name`` is ``<prefix>_m`` of (the longest), or None."""
        bases = [m for m in self.metrics if m != name and name.endswith("_" + m)]
        return max(bases, key=len) if bases else None

    def plot(self) -> None:
        """Draw losses (left) and validation metrics (right) and write the PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        for k, v in self.losses.items():
            if v:
                ax_l.plot(self.loss_epochs[: len(v)], v, marker="o", label=k)
        ax_l.set(xlabel="epoch", ylabel="loss (epoch mean)", title="training loss terms")
        if any(self.losses.values()):
            ax_l.legend(fontsize=8)
        colours: dict[str, str] = {}
        # a metric named <prefix>_<m> (e.g. teacher_branch_accuracy, from MetricsFromEvaluator) is drawn dashed in
        # <m>'s colour, so the two are told apart even where they coincide
        for k, v in sorted(self.metrics.items(), key=lambda kv: self._base_metric(kv[0]) is not None):
            base = self._base_metric(k)
            style = {"linestyle": "--", "marker": "x", "color": colours.get(base)} if base else {"marker": "o"}
            (line,) = ax_m.plot(self.metric_epochs[-len(v) :], v, label=k, **style)
            colours[k] = line.get_color()
        ax_m.set(xlabel="epoch", ylabel="metric", title="validation")
        if self.metrics:
            ax_m.legend(fontsize=8)
        fig.tight_layout()
        out_dir = os.path.dirname(os.path.abspath(self.filename))
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".png")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it; mkstemp's 0600 hides the plot from the group
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, self.filename)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.remove(tmp)
