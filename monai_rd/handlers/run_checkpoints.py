"""A run's checkpoints: written after every epoch, and the newest loaded to resume a stopped run exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_rd.data.checks import check_free_space
from monai_rd.handlers.checkpoint_saver import CrashSafeCheckpointSaver
from monai_rd.handlers.run_state import RunState
from monai_rd.utils.ranks import on_rank0

__all__ = ["RunCheckpoints"]


class RunCheckpoints:
    """``checkpoint_epoch=N.pt`` after every epoch's validation, and ``--resume true`` from the newest one.

    Attached to a trainer, it saves (crash-safe: :class:`~monai_rd.handlers.CrashSafeCheckpointSaver`, the previous
    file removed only once the new one is complete) the network, optimizer, LR schedule, the trainer's own state,
    the method's trainable parts, and a :class:`~monai_rd.handlers.RunState` with everything else the run's course
    depends on (random states, the best metric and best-model saver, stateful handlers, the settings' fingerprint).
    With ``load_path`` it first loads that checkpoint (MONAI's ``CheckpointLoader``, at the trainer's start), so a run
    killed at any point continues to the same weights, ``model.pt`` and metrics as the uninterrupted run.

    Attach it after the trainer's validation handler (last in the trainer's handlers), so a checkpoint holds the
    epoch's validation result. Every rank of a multi-process run attaches it (each loads the checkpoint); only rank
    0 writes.

    Args:
        save_dir: the run's models folder.
        load_path: the checkpoint to resume from (from :func:`monai_rd.bundle.prepare_run_folder`), or None.
        modules: the ``network``, ``optimizer`` and ``lr_scheduler``, by those names.
        parts: the method's trainable parts besides the network (Phi, a feature loss), by name.
        fingerprint: the settings a resumed checkpoint must match.
        stateful: what else persists: the validation engine (its best metric), the ``model.pt`` saver (a
            ``CheckpointSaver``: its record) and other handlers with ``state_dict`` (metric writers, plotters).
            The training transforms' random states persist too: those of the trainer's data loader.

    Raises:
        ValueError: ``modules`` lacks one of the three, or ``stateful`` holds an object with no state to keep.
    """

    def __init__(
        self,
        save_dir: str,
        load_path: str | None,
        modules: Mapping[str, Any],
        parts: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
        stateful: Sequence[Any] = (),
    ) -> None:
        self.save_dir = save_dir
        self.load_path = load_path
        missing = {"network", "optimizer", "lr_scheduler"} - set(modules)
        if missing:
            raise ValueError(f"RunCheckpoints needs the run's {sorted(missing)} in modules.")
        self.modules = {k: modules[k] for k in ("network", "optimizer", "lr_scheduler")}
        self.parts = dict(parts)
        evaluators = [s for s in stateful if isinstance(s, Engine)]
        savers = [s for s in stateful if isinstance(s, CheckpointSaver)]
        others = [s for s in stateful if not isinstance(s, (Engine, CheckpointSaver))]
        bad = [type(s).__name__ for s in others if not callable(getattr(s, "state_dict", None))]
        if bad or len(evaluators) > 1 or len(savers) > 1:
            raise ValueError(
                f"RunCheckpoints' stateful takes at most one evaluator, one CheckpointSaver and objects with "
                f"state_dict; got {[type(s).__name__ for s in stateful]}."
            )
        self.run_state_kwargs = dict(
            fingerprint=fingerprint,
            evaluator=evaluators[0] if evaluators else None,
            best_saver=savers[0] if savers else None,
            stateful=others,
        )

    def save_dict(self, trainer: Engine) -> dict[str, Any]:
        """What every checkpoint of ``trainer``'s run holds, by name."""
        transforms = getattr(getattr(getattr(trainer, "data_loader", None), "dataset", None), "transform", None)
        run_state = RunState(**self.run_state_kwargs, transforms=transforms, trainer=trainer)
        return {"run_state": run_state, **self.modules, "trainer": trainer, **self.parts}

    def checkpoint_bytes(self) -> tuple[int, int]:
        """``(checkpoint, model.pt)`` sizes to expect, in bytes: every tensor of the network and the parts, and the
        optimizer's (AdamW's two moments per trainable value; they are created at its first step); ``model.pt`` is
        the network alone."""
        network = sum(t.numel() * t.element_size() for t in self.modules["network"].state_dict().values())
        parts = sum(t.numel() * t.element_size() for m in self.parts.values() for t in m.state_dict().values())
        trained = {id(p): p for group in self.modules["optimizer"].param_groups for p in group["params"]}
        moments = 2 * sum(p.numel() * p.element_size() for p in trained.values() if p.requires_grad)
        return network + parts + moments, network

    def check_space(self) -> None:
        """Before the first epoch: is there room for the epoch's checkpoint and ``model.pt``? (A full disk would
        otherwise be found only when the first epoch ends.)"""
        checkpoint, model = self.checkpoint_bytes()
        check_free_space(self.save_dir, checkpoint + model, "a checkpoint and model.pt of this run")

    def attach(self, trainer: Engine) -> None:
        """Check the disk has room, load ``load_path`` when the trainer starts (if given), and save after every
        epoch."""
        save_dict = self.save_dict(trainer)
        # rank 0 measures its disk; every rank stops with its error (see on_rank0)
        trainer.add_event_handler(Events.STARTED, lambda _: on_rank0(self.check_space))
        if self.load_path is not None:
            device = getattr(trainer.state, "device", None)  # MONAI trainers record theirs
            CheckpointLoader(load_path=self.load_path, load_dict=save_dict, map_location=device).attach(trainer)
        CrashSafeCheckpointSaver(
            save_dir=self.save_dir, save_dict=save_dict, save_interval=1, epoch_level=True, n_saved=1
        ).attach(trainer)
