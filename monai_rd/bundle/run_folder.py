"""The output folders of one training run: refuse to overwrite a previous run, find the checkpoint to resume.

A fresh run (``--resume false``) in a folder that already holds a previous run's model or checkpoints stops
before any work unless ``--overwrite true``; then the previous files are moved to a ``replaced-<UTC time>``
subfolder, never deleted. ``--resume true`` continues from the newest ``checkpoint_epoch=N.pt`` (written after
every epoch's validation), after checking it was written by the same configuration.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

import torch

from monai_rd.bundle.distributed import on_rank0, run_fingerprint
from monai_rd.data.checks import check_writable
from monai_rd.errors import CheckpointMismatchError, OutputFolderError

__all__ = ["CHECKPOINT_GLOB", "RUN_OUTPUTS", "latest_checkpoint", "prepare_run_folder"]

CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"
# what a training run writes: (folder option, file patterns); datalist.json is derived from the data and stays
RUN_OUTPUTS = (
    ("ckpt_dir", ("model.pt", CHECKPOINT_GLOB, "checkpoint_final.pt", "model_meta.json")),
    ("output_dir", ("val_metrics.json", "training_curve.png")),
)
_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` with the largest N, or None."""
    found = [(int(_EPOCH.search(p).group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, CHECKPOINT_GLOB))]
    return max(found)[1] if found else None


def _previous_outputs(folders: Mapping[str, str]) -> list[str]:
    return sorted(
        p
        for opt, patterns in RUN_OUTPUTS
        for pattern in patterns
        for p in glob.glob(os.path.join(folders[opt], pattern))
    )


def _fingerprint_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def prepare_run_folder(
    ckpt_dir: str,
    output_dir: str,
    resume: bool,
    overwrite: bool,
    fingerprint: Mapping[str, Any] | None = None,
) -> str | None:
    """Check the run's folders before any work and return the checkpoint to resume from.

    In a multi-process run (``torchrun``) rank 0 alone checks, moves or refuses, and every rank gets its answer
    (or its error) once it is done; the fingerprint gets the number of processes
    (:func:`~monai_rd.bundle.distributed.run_fingerprint`).

    Args:
        ckpt_dir: the model/checkpoint folder (``--ckpt_dir``).
        output_dir: the metrics/plot folder (``--output_dir``).
        resume: continue the run whose checkpoints are in ``ckpt_dir``.
        overwrite: start afresh even though ``ckpt_dir``/``output_dir`` hold a previous run (its files are moved
            to ``replaced-<UTC time>/`` in their folder).
        fingerprint: the settings that fix the run's course (see :class:`~monai_rd.handlers.RunState`); a resumed
            checkpoint must carry the same.

    Returns:
        The checkpoint path with ``resume``, else None.

    Raises:
        OutputFolderError: a folder is not writable, or holds a previous run and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: ``resume`` but no ``checkpoint_epoch=N.pt`` is in ``ckpt_dir``.
        CheckpointMismatchError: the checkpoint was written by another configuration (the differing settings are
            named).
    """
    if fingerprint is not None:
        fingerprint = run_fingerprint(fingerprint)
    return on_rank0(_prepare_run_folder, ckpt_dir, output_dir, resume, overwrite, fingerprint)


def _prepare_run_folder(
    ckpt_dir: str, output_dir: str, resume: bool, overwrite: bool, fingerprint: Mapping[str, Any] | None
) -> str | None:
    folders = {"ckpt_dir": ckpt_dir, "output_dir": output_dir}
    for folder in check_writable(*dict.fromkeys(folders.values())):
        os.makedirs(folder, exist_ok=True)
    if resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume true, but {ckpt_dir!r} holds no {CHECKPOINT_GLOB} (one is written after every epoch); "
                "run without --resume to start afresh, or point --ckpt_dir at the run to continue."
            )
        if fingerprint is not None:
            saved = torch.load(path, map_location="cpu", weights_only=True).get("run_state", {}).get("fingerprint")
            if saved is None:
                raise CheckpointMismatchError(
                    f"{path} has no run fingerprint (written by an older monai_rd); it cannot be resumed safely. "
                    "Start afresh with --overwrite true."
                )
            diff = _fingerprint_diff(saved, fingerprint)
            if diff:
                raise CheckpointMismatchError(
                    f"{path} was written by another configuration ({'; '.join(diff)}); resume with the same settings, "
                    "or start afresh with --resume false --overwrite true."
                )
        return path
    previous = _previous_outputs(folders)
    if previous and not overwrite:
        raise OutputFolderError(
            f"{len(previous)} file(s) of a previous run are in the output folders (e.g. {previous[0]}); continue that "
            "run with --resume true, start afresh with --overwrite true (the previous files are moved to a "
            "replaced-<time> subfolder, not deleted), or choose another --ckpt_dir/--output_dir."
        )
    if previous:
        stamp = time.strftime("replaced-%Y%m%dT%H%M%SZ", time.gmtime())
        for path in previous:
            dest = os.path.join(os.path.dirname(path), stamp)
            os.makedirs(dest, exist_ok=True)
            shutil.move(path, os.path.join(dest, os.path.basename(path)))
    return None


