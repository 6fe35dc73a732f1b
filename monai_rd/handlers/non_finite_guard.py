"""Stop a training run at the first NaN or infinite loss, gradient norm or weight, before anything saves it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_rd.errors import NonFiniteError

__all__ = ["NonFiniteGuard"]


class NonFiniteGuard:
    """Raises :class:`~monai_rd.errors.NonFiniteError` when a training step goes non-finite, naming where and why.

    Attached to a MONAI trainer (any :class:`monai.engines.SupervisedTrainer`, which fires MONAI's iteration events),
    it checks, once per step and with one host sync each:

    * the loss, on ``LOSS_COMPLETED``, i.e. before the backward pass and the optimizer step (the message gives the
      iteration, every loss term in the output and the batch's files, marking those with NaN/Inf pixels);
    * the clipped gradient norm, when the trainer clips (it calls :meth:`check_grad_norm` before its step);
    * every optimizer parameter and every floating-point buffer of the named modules (BatchNorm statistics), on
      ``MODEL_COMPLETED``, after the optimizer step: one fused max-abs reduction.

    The error is raised inside the iteration, so no ``ITERATION_COMPLETED``/``EPOCH_COMPLETED`` handler (a
    checkpoint saver) runs on a diverged model; a handler that saves on ``EXCEPTION_RAISED`` must itself skip
    this error. A step that AMP's ``GradScaler`` skips for inf/NaN gradients is normal, and the trainer then does
    not call :meth:`check_grad_norm`.

    Args:
        modules: the trained modules by name (``network``, ``reprogrammer``, ...): their buffers are checked and
            their names used in messages.
        loss_keys: the output keys whose values the messages list (the loss terms).
        extra_terms: returns more ``name -> value`` pairs for the messages (e.g. the current loss weights).
        source_key: batch key of the images' source paths (e.g. from ``CopyItemsd(keys="image",
            names="image_path")`` placed before loading), named in messages; without it the image's MetaTensor
            ``filename_or_obj`` is used.
        stage: what is being trained, for messages (e.g. ``"Phi and the head alone (direct reprogramming)"``).
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module | None],
        loss_keys: tuple[str, ...] = (Keys.LOSS,),
        extra_terms: Callable[[], Mapping[str, float]] | None = None,
        source_key: str = "image_path",
        stage: str | None = None,
    ) -> None:
        self.modules = {k: m for k, m in modules.items() if m is not None}
        self.loss_keys = tuple(loss_keys)
        self.extra_terms = extra_terms
        self.source_key = source_key
        self.stage = stage

    def attach(self, engine: Engine) -> None:
        """Check the loss on ``LOSS_COMPLETED`` and the weights on ``MODEL_COMPLETED`` of ``engine``."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.check_loss)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.check_weights)

    # ---------------------------------------------------------------------------------------------- messages
    def where(self, engine: Engine) -> str:
        """``iteration 7 (epoch 2, iteration 3 of 4 in the epoch)``, plus the stage when there is one."""
        it, epoch, length = engine.state.iteration, engine.state.epoch, engine.state.epoch_length
        local = f", iteration {(it - 1) % length + 1} of {length} in the epoch" if length else ""
        stage = f" while training {self.stage}" if self.stage else ""
        return f"iteration {it} (epoch {epoch}{local}){stage}"

    def terms(self, engine: Engine) -> str:
        """The loss terms of the step's output (and the extra terms), as ``name=value`` pairs."""
        out = engine.state.output or {}
        values = {k: float(torch.as_tensor(out[k]).detach()) for k in self.loss_keys if k in out}
        if self.extra_terms is not None:
            values.update(self.extra_terms())
        return ", ".join(f"{k}={v:.6g}" for k, v in values.items())

    def batch_sources(self, engine: Engine) -> str:
        """The batch's source files, and which of them hold non-finite input values."""
        batch, out = engine.state.batch, engine.state.output or {}
        inputs = out.get(Keys.IMAGE)
        names: Any = None
        if isinstance(batch, Mapping):
            if self.source_key in batch:
                names = batch[self.source_key]
            elif isinstance(batch.get(Keys.IMAGE), MetaTensor):
                names = batch[Keys.IMAGE].meta.get("filename_or_obj")
            if inputs is None:
                inputs = batch.get(Keys.IMAGE)
        if isinstance(names, (str, os.PathLike)):
            names = [names]
        bad: list[int] = []
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
            bad = (~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero().flatten().tolist()
        size = len(inputs) if isinstance(inputs, torch.Tensor) else None
        if not isinstance(names, (list, tuple)) or (size is not None and len(names) != size):
            text = (
                f"the batch's file names are unknown (put the source paths under {self.source_key!r}, e.g. with "
                f"CopyItemsd(keys='image', names={self.source_key!r}) before loading, or load MetaTensors)"
            )
            return text + (f"; samples {bad} of the batch have NaN/Inf input values" if bad else "")
        text = "files: " + ", ".join(str(n) for n in names)
        return text + (f"; NaN/Inf input values in: {', '.join(str(names[i]) for i in bad)}" if bad else "")

    # ------------------------------------------------------------------------------------------------ checks
    def check_loss(self, engine: Engine) -> None:
        """Raise when the step's loss is NaN/Inf (before backward: nothing was updated)."""
        if bool(torch.isfinite(engine.state.output[Keys.LOSS])):  # the one host sync before backward
            return
        raise NonFiniteError(
            f"non-finite loss at {self.where(engine)}: {self.terms(engine)}; {self.batch_sources(engine)}. Training "
            "stopped before the backward pass and the optimizer step of this batch. Check these images for NaN/Inf "
            "values, or lower the learning rate if the loss grew over the previous iterations."
        )

    def check_grad_norm(self, engine: Engine, total_norm: torch.Tensor) -> None:
        """Raise when the clipped gradient norm is NaN/Inf (before the optimizer step)."""
        if bool(torch.isfinite(total_norm)):
            return
        raise NonFiniteError(
            f"non-finite gradient norm ({float(total_norm)}) at {self.where(engine)} with a finite loss: "
            f"{self.terms(engine)}; {self.batch_sources(engine)}. Training stopped before the optimizer step; lower "
            "the learning rate, or look for operations with unbounded gradients in the model (e.g. sqrt or log at 0)."
        )

    @torch.no_grad()
    def check_weights(self, engine: Engine) -> None:
        """Raise when an optimizer parameter or a module's floating-point buffer is NaN/Inf after the step."""
        optimizer = engine.optimizer  # type: ignore[attr-defined]
        tensors = [p for g in optimizer.param_groups for p in g["params"]]
        tensors += [b for m in self.modules.values() for b in m.buffers() if b.is_floating_point()]
        if not tensors:
            return
        # max |w| per tensor in one fused kernel (a norm of order 2 would overflow for large finite weights)
        finite = torch.stack([m.float() for m in torch._foreach_norm(tensors, float("inf"))]).isfinite()
        if bool(finite.all()):  # one host sync per step
            return
        first = tensors[int((~finite).nonzero()[0])]
        names = {
            id(t): f"{prefix}.{n}"
            for prefix, m in self.modules.items()
            for n, t in [*m.named_parameters(), *m.named_buffers()]
        }
        lrs = dict.fromkeys(str(g.get("lr")) for g in optimizer.param_groups)
        outside = f"an optimizer parameter outside {', '.join(self.modules)}"
        raise NonFiniteError(
            f"non-finite weights after the optimizer step at {self.where(engine)}: the first is "
            f"{names.get(id(first), outside)!r} (learning rate {', '.join(lrs)}); loss terms of the batch: "
            f"{self.terms(engine)}; {self.batch_sources(engine)}. Training stopped before any handler could save "
            "these weights; lower the learning rate or set grad_clip_norm."
        )
