"""Direct reprogramming: Phi and the student's head trained alone on the teacher's features, then frozen."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer

from monai_rd.engines.data_parallel import average_gradients
from monai_rd.engines.teacher_features import TeacherFeatureSource
from monai_rd.handlers.non_finite_guard import NonFiniteGuard

__all__ = ["ReprogrammingTrainer"]

logger = logging.getLogger(__name__)


class ReprogrammingTrainer(SupervisedTrainer):
    """The first stage of direct reprogramming (an RD ablation, ``--method rd_direct``).

    Phi and the student's shared classifier ``h`` are trained alone, on the teacher's features only: each
    iteration takes the batch's teacher features (cache rows, precomputed features or the live teacher,
    :class:`~monai_rd.engines.TeacherFeatureSource`), computes ``h(Phi(features))`` and the task loss on it, and
    takes an optimizer step (gradients averaged over the ranks of a multi-process run, since Phi and the head are
    not inside DDP here). When the run ends both are frozen (no gradient, Phi in eval mode), so the student's own
    training (:class:`~monai_rd.engines.RDTrainer`) then distils a fixed reprogrammed teacher. A
    :class:`~monai_rd.handlers.NonFiniteGuard` stops it at a non-finite loss or weight.

    Args:
        device: device to train on.
        max_epochs: epochs of this stage.
        train_data_loader: the student's training loader (its batches carry the teacher's cache rows).
        reprogrammer: Phi.
        network: the student, whose ``classify`` (and so its ``head``) is the shared classifier.
        optimizer: optimizer over Phi's and the head's parameters only.
        loss_function: the task loss on the teacher branch's logits (e.g. ``RDLoss.supervised``).
        features: where the teacher's features come from.
        lr_scheduler: stepped after every epoch (e.g. cosine over ``max_epochs``), or None.
        source_key: batch key of the images' source paths, for the guard's messages.
        kwargs: other :class:`monai.engines.SupervisedTrainer` arguments.

    Raises:
        ValueError: the student has no ``head`` module, or the optimizer holds other parameters than Phi's and the
            head's.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        reprogrammer: nn.Module,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        features: TeacherFeatureSource,
        lr_scheduler: Any | None = None,
        source_key: str = "image_path",
        **kwargs: Any,
    ) -> None:
        head = getattr(network, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError("direct reprogramming needs a student with a `head` classifier (StudentClassifier).")
        parts = nn.ModuleDict({"reprogrammer": reprogrammer, "head": head})
        own = {id(p) for p in parts.parameters()}
        stray = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
        if stray:
            raise ValueError(
                f"the direct-reprogramming optimizer holds {len(stray)} parameter(s) outside Phi and the student's "
                "head; build it over list(reprogrammer.parameters()) + list(network.head.parameters())."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=parts,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.reprogrammer = reprogrammer
        self.student = network
        self.features = features
        NonFiniteGuard(parts, source_key=source_key, stage="Phi and the head alone (direct reprogramming)").attach(self)
        if lr_scheduler is not None:
            self.add_event_handler(Events.EPOCH_COMPLETED, lambda _: lr_scheduler.step())
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)
        self._ce_sum = 0.0
        self._ce_count = 0

    def run(self) -> None:  # type: ignore[override]
        """Train Phi and the head, then freeze them (no gradient; Phi in eval mode)."""
        params = list(self.network.parameters())
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        super().run()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        self.reprogrammer.eval()

    def _log_epoch(self, engine: ReprogrammingTrainer) -> None:
        mean_ce = self._ce_sum / max(self._ce_count, 1)
        logger.info(
            f"direct reprogramming: epoch {engine.state.epoch}/{engine.state.max_epochs}, "
            f"teacher-branch CE {mean_ce:.4f}"
        )
        self._ce_sum, self._ce_count = 0.0, 0

    def _iteration(self, engine: ReprogrammingTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        feats = engine.features(batchdata, inputs, engine.state.device, engine.non_blocking)
        if feats is None:
            raise ValueError("direct reprogramming needs teacher features in every batch (a teacher or a cache).")
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.reprogrammer.train()
        engine.student.train()
        logits = engine.student.classify(engine.reprogrammer(feats))
        engine.state.output[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(logits, targets)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)  # the guard checks the loss before backward
        engine.optimizer.zero_grad()
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        average_gradients(list(engine.network.parameters()))  # outside DDP: keep Phi and the head equal on every rank
        engine.optimizer.step()
        engine._ce_sum += float(loss.detach()) * len(targets)
        engine._ce_count += len(targets)
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # and the weights after the step
        return engine.state.output
