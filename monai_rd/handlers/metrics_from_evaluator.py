"""Copy a second evaluator's metrics of the same epoch into an engine's metrics, under a prefix."""

from __future__ import annotations

from collections.abc import Sequence

from ignite.engine import Engine, Events

__all__ = ["MetricsFromEvaluator"]


class MetricsFromEvaluator:
    """Adds ``source``'s metrics of the current epoch to the attached engine's ``state.metrics`` as ``<prefix>_<name>``.

    Used to record RD's teacher-branch accuracy (a second ``SupervisedEvaluator`` scoring ``h(Phi(T(x)))``) beside
    the student's in one place: every handler of the student's evaluator attached after this one (the
    :class:`~monai_rd.handlers.MetricsJSONWriter`, the ``StatsHandler``, the
    :class:`~monai_rd.handlers.TrainingCurvePlotter`) sees them as ordinary metrics. The student's key metric and
    checkpoint selection are not affected: they read the key metric's own name.

    ``source`` must have run for the same epoch before the attached engine completes its epoch: with
    ``run_source`` this handler runs it when the engine's epoch starts (so it needs no ``ValidationHandler`` of
    its own); otherwise its ``ValidationHandler`` must come before the engine's in the trainer's handlers. A
    ``source`` of None records nothing (a method without a second branch to score).

    Args:
        source: the other evaluator, or None.
        prefix: prefix of the copied names, e.g. ``"teacher_branch"``.
        names: metrics to copy (default: all of ``source``'s).
        run_source: run ``source`` for the engine's epoch when that epoch starts.

    Raises:
        ValueError: an empty prefix.
    """

    def __init__(
        self, source: Engine | None, prefix: str, names: Sequence[str] | None = None, run_source: bool = False
    ) -> None:
        if not prefix:
            raise ValueError("MetricsFromEvaluator needs a non-empty prefix, so copies cannot shadow the engine's own.")
        self.source = source
        self.prefix = prefix
        self.names = list(names) if names is not None else None
        self.run_source = run_source

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s EPOCH_COMPLETED (attach before the handlers that should see the copies), and with
        ``run_source`` on its EPOCH_STARTED; nothing without a source."""
        if self.source is None:
            return
        if self.run_source:
            engine.add_event_handler(Events.EPOCH_STARTED, self._run_source)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _run_source(self, engine: Engine) -> None:
        self.source.run(global_epoch=engine.state.epoch)

    def __call__(self, engine: Engine) -> None:
        """Copy the metrics.

        Raises:
            RuntimeError: ``source`` has not run for this epoch (its validation handler is missing or comes after
                the engine's), so the copy would be stale.
        """
        if self.source.state.epoch != engine.state.epoch or not self.source.state.metrics:
            raise RuntimeError(
                f"the {self.prefix!r} evaluator has not run for epoch {engine.state.epoch} (its last run was for epoch "
                f"{self.source.state.epoch}); attach its ValidationHandler to the trainer before the one of the "
                "evaluator it reports to, with the same interval."
            )
        names = self.names if self.names is not None else list(self.source.state.metrics)
        for name in names:
            if name in self.source.state.metrics:
                engine.state.metrics[f"{self.prefix}_{name}"] = self.source.state.metrics[name]
