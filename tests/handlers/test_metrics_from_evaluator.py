"""MetricsFromEvaluator: a second evaluator's metrics of the same epoch, copied under a prefix."""

import pytest
from ignite.engine import Engine, Events

from monai_rd.handlers import MetricsFromEvaluator


def _engine(metrics_per_epoch):
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set(e):
        e.state.metrics.update(metrics_per_epoch(e.state.epoch))

    return engine


def test_copies_the_same_epochs_metrics_under_the_prefix():
    """Catches copying without the prefix (shadowing the student's accuracy) or copying the previous epoch's values."""
    source = _engine(lambda ep: {"accuracy": ep / 10, "auc": 0.5})
    target = _engine(lambda ep: {"accuracy": 0.9})
    MetricsFromEvaluator(source, "teacher_branch", names=["accuracy"]).attach(target)
    seen = []
    target.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    for epoch in (1, 2):  # a finished ignite engine run again with more epochs continues, as under ValidationHandler
        source.run([0], max_epochs=epoch)
        target.run([0], max_epochs=epoch)
    assert seen == [{"accuracy": 0.9, "teacher_branch_accuracy": e / 10} for e in (1, 2)]


def test_a_source_that_did_not_run_this_epoch_is_an_error():
    """Catches silently recording a stale teacher-branch value when its validation handler runs after the student's."""
    source = _engine(lambda ep: {"accuracy": 0.3})
    target = _engine(lambda ep: {"accuracy": 0.9})
    MetricsFromEvaluator(source, "teacher_branch").attach(target)
    with pytest.raises(RuntimeError, match="has not run for epoch 1"):
        target.run([0], max_epochs=1)
    with pytest.raises(ValueError, match="prefix"):
        MetricsFromEvaluator(source, "")
