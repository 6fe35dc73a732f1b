"""What a resumed run needs besides the weights: random streams, the best score so far, and metric histories."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

from monai_rd.errors import CheckpointMismatchError
from monai_rd.utils.ranks import run_fingerprint

__all__ = ["RunState", "data_digest"]


def data_digest(items: Sequence[Mapping]) -> str:
    """SHA-256 (first 16 hex digits) of a datalist split's images and labels, in order."""
    rows = [[str(it.get("image")), it.get("label")] for it in items]
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def _np_state_to_torch(state: tuple) -> dict:
    # plain tensors and numbers, so the checkpoint loads with torch.load(weights_only=True)
    return {"keys": torch.from_numpy(state[1].astype(np.int64)), "pos": int(state[2]), "has_gauss": int(state[3]),
            "gauss": float(state[4])}


def _np_state_from_torch(state: Mapping) -> tuple:
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


def _randomizables(transform: Any, depth: int = 4) -> list[Randomizable]:
    """Every Randomizable in ``transform``, nested ones included (``RandAffined`` draws from its inner
    ``RandAffine`` and ``RandAffineGrid``, each with its own random state), in a stable order."""
    found: dict[int, Randomizable] = {}

    def visit(obj: Any, level: int) -> None:
        if level > depth or id(obj) in found:
            return
        if isinstance(obj, (list, tuple)):
            for o in obj:
                visit(o, level + 1)
            return
        if isinstance(obj, Randomizable):
            found[id(obj)] = obj
        if isinstance(obj, (Randomizable, Compose)) or type(obj).__module__.startswith("monai"):
            for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
                if isinstance(value, (Randomizable, Compose, list, tuple)) or (
                    hasattr(value, "__dict__") and type(value).__module__.startswith("monai.transforms")
                ):
                    visit(value, level + 1)

    visit(transform, 0)
    return list(found.values())


class RunState:
    """A checkpoint entry (``state_dict``/``load_state_dict``) holding the rest of a run's state.

    Saved beside the networks and optimizer by ``CheckpointSaver`` after every epoch, so that a run killed at any
    point resumes from its last epoch to the same final metrics and ``model.pt`` as the uninterrupted run (on a CPU
    with a fixed seed): Python, NumPy, torch (and CUDA) random states and those of the random training transforms,
    the validator's best metric and epoch, the best-model saver's record (so the first validation after a resume
    does not replace a better ``model.pt``), the state of any other stateful handler (metric history, training
    curve), the AMP grad scaler, and the fingerprint of the settings that fix the run's course.

    Args:
        fingerprint: settings whose change makes a checkpoint unusable (epochs, batch size, data, ...); a loaded
            state with another fingerprint is refused.
        evaluator: the validation engine whose ``best_metric``/``best_metric_epoch`` persist.
        best_saver: the evaluator's key-metric ``monai.handlers.CheckpointSaver`` (``model.pt``).
        transforms: the training transforms whose random states are kept (a ``Compose`` or a transform).
        stateful: other objects with ``state_dict``/``load_state_dict`` (metric writers, plotters).
        trainer: the trainer, for its AMP grad scaler.

    Raises:
        CheckpointMismatchError: (on load) the checkpoint's fingerprint differs from this run's.
    """

    def __init__(
        self,
        fingerprint: Mapping[str, Any],
        evaluator: Any | None = None,
        best_saver: Any | None = None,
        transforms: Any | None = None,
        stateful: Sequence[Any] = (),
        trainer: Any | None = None,
    ) -> None:
        # with the number of processes in a multi-process run, as prepare_run_folder checks it
        self.fingerprint = json.loads(json.dumps(run_fingerprint(fingerprint), default=str))
        self.evaluator = evaluator
        self.best_saver = best_saver
        self.transforms = _randomizables(transforms)
        self.stateful = list(stateful)
        self.trainer = trainer

    def state_dict(self) -> dict:
        """The run's state as plain tensors, numbers and strings."""
        out: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "python_rng": torch.tensor(random.getstate()[1], dtype=torch.int64),
            "python_rng_version": random.getstate()[0],
            "python_rng_gauss": random.getstate()[2],
            "numpy_rng": _np_state_to_torch(np.random.get_state()),
            "torch_rng": torch.get_rng_state(),
            "transform_rng": [_np_state_to_torch(t.R.get_state()) for t in self.transforms],
            "stateful": [s.state_dict() for s in self.stateful],
        }
        if torch.cuda.is_available():
            out["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.evaluator is not None:
            out["best_metric"] = float(self.evaluator.state.best_metric)
            out["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        if self.best_saver is not None and self.best_saver._key_metric_checkpoint is not None:
            out["best_saver"] = self.best_saver._key_metric_checkpoint.state_dict()
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None:
            out["grad_scaler"] = scaler.state_dict()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        Raises:
            CheckpointMismatchError: the fingerprints differ, or the transforms/handlers do not match in number.
        """
        saved = state.get("fingerprint", {})
        if saved != self.fingerprint:
            diff = [k for k in sorted(set(saved) | set(self.fingerprint)) if saved.get(k) != self.fingerprint.get(k)]
            raise CheckpointMismatchError(f"the checkpoint was written by another configuration (differs in {diff}).")
        if len(state["transform_rng"]) != len(self.transforms) or len(state["stateful"]) != len(self.stateful):
            raise CheckpointMismatchError("the checkpoint was written with other training transforms or handlers.")
        version, gauss = state["python_rng_version"], state["python_rng_gauss"]
        random.setstate((version, tuple(int(v) for v in state["python_rng"].tolist()), gauss))
        np.random.set_state(_np_state_from_torch(state["numpy_rng"]))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for t, s in zip(self.transforms, state["transform_rng"]):
            t.R.set_state(_np_state_from_torch(s))
        for obj, s in zip(self.stateful, state["stateful"]):
            obj.load_state_dict(s)
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.best_saver is not None and "best_saver" in state:
            self.best_saver.load_state_dict(state["best_saver"])
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
