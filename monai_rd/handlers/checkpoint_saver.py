"""MONAI's ``CheckpointSaver``, made crash-safe: a kill at any moment leaves a complete checkpoint to resume from."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from monai_rd.utils.ranks import rank

__all__ = ["CrashSafeCheckpointSaver"]


class _CrashSafeDiskSaver(DiskSaver):
    """Atomic writes (temporary file + rename), and deletion of a replaced file only after its successor is written.

    ignite's ``Checkpoint`` removes the file it replaces *before* saving the new one, and MONAI's disk saver writes
    in place, so a process killed while saving leaves a truncated file, or none at all.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False, create_dir=True)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint, name, metadata)
        for old in self._replaced:
            if old != name and os.path.exists(os.path.join(self.dirname, old)):
                super().remove(old)
        self._replaced.clear()

    def remove(self, filename: str) -> None:
        # a fixed file name is replaced by the rename itself; others go once the next checkpoint is complete
        if self.filename is None:
            self._replaced.append(filename)


class CrashSafeCheckpointSaver(_MonaiCheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are never truncated and never missing.

    Same arguments and file names as MONAI's. Every file is written to a temporary file in the same folder and
    renamed into place, so ``model.pt`` and ``checkpoint_epoch=N.pt`` are always complete, and a checkpoint that
    ``n_saved`` retires is deleted only after its successor is on disk (``kill -9`` during a save leaves the
    previous checkpoint to ``--resume`` from). Periodic checkpoints already in ``save_dir`` when it is attached (those
    of the run being resumed) count towards ``n_saved``, so a resumed run retires them as the original would have.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects to save (``state_dict`` providers).
        kwargs: the other ``monai.handlers.CheckpointSaver`` arguments.
    """

    rank0_only = True  # writes files: one process of a torchrun job does (see monai_rd.bundle.distributed)

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _CrashSafeDiskSaver(save_dir, getattr(ckpt.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        """Attach as MONAI's saver does, after adopting the periodic checkpoints already in ``save_dir``; in a
        multi-process run only rank 0 saves, so the other ranks attach nothing."""
        if rank() != 0:
            return
        ckpt = self._interval_checkpoint
        if ckpt is not None:
            # ignite names the file after the single saved object, or "checkpoint" for several
            name = next(iter(ckpt.to_save)) if len(ckpt.to_save) == 1 else "checkpoint"
            prefix = f"{ckpt.filename_prefix}_" if ckpt.filename_prefix else ""
            step = re.compile(rf"^{re.escape(prefix + name)}_{ckpt.score_name}=(\d+)\.{ckpt.ext}$")
            found = sorted(
                (int(m.group(1)), name)
                for name in map(os.path.basename, glob.glob(os.path.join(self.save_dir, "*")))
                if (m := step.match(name))
            )
            ckpt._saved = [Checkpoint.Item(priority, name) for priority, name in found]
        super().attach(engine)


class BestModelSaver(CrashSafeCheckpointSaver):
    """``models/model.pt``: the deployed network with the best key metric of the evaluator it is attached to.

    A :class:`CrashSafeCheckpointSaver` of ``{"model": network}`` keyed on the evaluator's key metric, written as
    ``model.pt`` (complete or not at all).

    Args:
        save_dir: the run's models folder.
        network: the model that is deployed (the student, or a teacher baseline with its head).
        kwargs: other ``monai.handlers.CheckpointSaver`` arguments.
    """

    def __init__(self, save_dir: str, network: Any, **kwargs: Any) -> None:
        super().__init__(
            save_dir=save_dir, save_dict={"model": network}, save_key_metric=True, key_metric_filename="model.pt",
            **kwargs,
        )
