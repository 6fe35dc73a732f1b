"""Crash-safe checkpoints: a replaced checkpoint disappears only after its successor is complete."""

import os

import pytest
import torch
from ignite.engine import Engine, Events

from monai_rd.handlers import CrashSafeCheckpointSaver


def test_previous_checkpoint_survives_a_failed_save(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    saver = CrashSafeCheckpointSaver(
        str(tmp_path), {"net": net, "opt": opt}, save_interval=1, epoch_level=True, n_saved=1
    )
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=2.pt"]

    class Unpicklable:
        def state_dict(self):
            raise KeyboardInterrupt  # stands for a kill while the next checkpoint is written

        def load_state_dict(self, _):
            pass

    engine2 = Engine(lambda e, b: None)
    saver2 = CrashSafeCheckpointSaver(str(tmp_path), {"net": net, "x": Unpicklable()}, save_interval=1, n_saved=1)
    saver2.attach(engine2)
    engine2.state.epoch, engine2.state.iteration, engine2.state.max_epochs, engine2.state.epoch_length = 2, 2, 2, 1
    with pytest.raises(KeyboardInterrupt):
        engine2.run([0], max_epochs=3)
    # ignite's own order (remove, then save) would have deleted epoch 2's checkpoint here
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=2.pt"]
    assert set(torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)) == {"net", "opt"}


def test_a_resumed_run_retires_the_checkpoints_it_found(tmp_path):
    net = torch.nn.Linear(2, 2)
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"from the interrupted run")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    engine = Engine(lambda e, b: None)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    CrashSafeCheckpointSaver(str(tmp_path), {"net": net, "opt": opt}, save_interval=1, n_saved=1).attach(engine)
    engine.state.epoch, engine.state.iteration, engine.state.max_epochs, engine.state.epoch_length = 2, 2, 2, 1
    engine.run([0], max_epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=3.pt", "notes.txt"]


def test_best_model_file_is_replaced_atomically(tmp_path):
    net = torch.nn.Linear(2, 2)
    evaluator = Engine(lambda e, b: None)
    scores = iter([0.5, 0.9])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _(e):
        e.state.metrics = {"acc": next(scores)}

    evaluator.state.key_metric_name = "acc"
    saver = CrashSafeCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="acc",
                                     key_metric_filename="model.pt")
    saver.attach(evaluator)
    with torch.no_grad():
        evaluator.run([0], max_epochs=1)
        net.weight.fill_(7.0)
        evaluator.run([0], max_epochs=2)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(7.0).all()
