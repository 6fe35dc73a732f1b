"""Logit distillation's trainer: the student learns from the logits of a fixed head on the teacher's features."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai_rd.engines.distillation_trainer import DistillationTrainer

__all__ = ["KDTrainer"]


class KDTrainer(DistillationTrainer):
    """Trains a student on the task and on the logits of a frozen teacher head (Hinton KD and its successors).

    The teacher head maps the teacher's features to class logits: the teacher's linear probe fitted on its
    features (``--method kd``), or the head of a teacher adapted beforehand (``lora_kd``). It is frozen here like
    the teacher (eval mode, no grad, refused in the optimizer). Each iteration: ``z_S = S(x)``, the student's
    logits ``h(z_S)``, the teacher logits ``head(features)`` under ``torch.no_grad()``, and the loss: an
    :class:`~monai_rd.losses.RDLoss` with no Phi (its teacher-branch CE weighted by alpha, 0 for KD) whose KD term
    is Hinton's KL or another logit loss (DKD, DIST), which may also take the labels. The rest is
    :class:`~monai_rd.engines.DistillationTrainer`'s.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image``, ``label`` and the teacher's cache rows or features.
        network: the deployable student (:class:`~monai_rd.networks.StudentClassifier`).
        optimizer: optimizer over the student's parameters.
        loss_function: the loss, called as ``loss(student_logits, target, teacher_logits, student_features)``.
        teacher_head: the fixed module mapping teacher features to teacher logits (e.g. a fitted
            :class:`~monai_rd.networks.linear_probe.LinearProbe`).
        teacher: the frozen teacher, run when a batch carries no cached features.
        kwargs: the other :class:`~monai_rd.engines.DistillationTrainer` arguments.

    Raises:
        ValueError: no teacher head, or any of DistillationTrainer's checks.
    """

    uses_teacher_features = True

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Any,
        teacher_head: nn.Module,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_head is None:
            raise ValueError("KDTrainer needs a teacher_head mapping the teacher's features to logits.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            teacher=teacher,
            frozen={"teacher_head": teacher_head},
            **kwargs,
        )

    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The student's branch, and with teacher features the fixed head's logits (no grad)."""
        out = super().trainable_forward(inputs, feats_t)
        if feats_t is not None:
            with torch.no_grad():
                out["teacher_logits"] = self.teacher_head(feats_t)
        return out

    def loss_terms(self, out: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss on the student's logits and the teacher head's."""
        return dict(
            self.loss_function(out["student_logits"], targets, out.get("teacher_logits"), out["student_features"])
        )
