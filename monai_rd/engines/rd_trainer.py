"""Reprogramming Distillation's trainer: Phi maps the teacher's features into the student's, one head for both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai_rd.engines.distillation_trainer import DistillationTrainer
from monai_rd.losses.rd import RDLoss

__all__ = ["RDTrainer"]


class RDTrainer(DistillationTrainer):
    """Trains a student and the reprogramming module Phi against a frozen teacher (Zhou et al., MICCAI 2024).

    Each iteration: the teacher's features without grad (a cache's rows, precomputed features or the live
    teacher), ``z_T = Phi(features)``, ``z_S = S(x)``, the student's shared classifier ``h`` on both, the
    :class:`~monai_rd.losses.RDLoss` terms ``CE(h(z_S)) + alpha CE(h(z_T)) + beta KD + gamma (1 - CKA)``, backward
    and an optimizer step, guarded and logged as :class:`~monai_rd.engines.DistillationTrainer` describes
    (``engine.state.output`` holds ``ce_student``, ``ce_teacher``, ``kd``, ``cka``, ``alpha`` and ``beta``).

    A Phi whose parameters are all frozen (trained beforehand by direct reprogramming,
    :class:`~monai_rd.engines.ReprogrammingTrainer`) stays in eval mode and only serves ``z_T``.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image``, ``label`` and the teacher's cache rows or features.
        network: the deployable student (:class:`~monai_rd.networks.StudentClassifier`).
        optimizer: optimizer over the student's and Phi's parameters.
        loss_function: an :class:`~monai_rd.losses.RDLoss`.
        reprogrammer: Phi (a :class:`~monai_rd.networks.ReprogrammingNet`).
        teacher: the frozen teacher, run when a batch carries no cached features.
        kwargs: the other :class:`~monai_rd.engines.DistillationTrainer` arguments.

    Raises:
        ValueError: no Phi, the loss is not an RDLoss, or any of DistillationTrainer's checks.
    """

    uses_teacher_features = True

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: RDLoss,
        reprogrammer: nn.Module | None = None,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if reprogrammer is None:
            raise ValueError(
                "RDTrainer needs a reprogrammer (Phi) to map the teacher's features; pass reprogrammer= (the student "
                "alone trains with DistillationTrainer)."
            )
        if not isinstance(loss_function, RDLoss):
            raise ValueError(f"loss_function must be a monai_rd.losses.RDLoss, got {type(loss_function).__name__}.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            teacher=teacher,
            trainable={"reprogrammer": reprogrammer},
            **kwargs,
        )

    def reprogram(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """Phi on the teacher's features: ``z_T``, in the student's feature space.

        Args:
            teacher_features: (B, C_T, *spatial) or (B, C_T).
            student_features: ``z_S``, (B, D); subclasses may use its shape (a dense Phi resamples to it).

        Returns:
            ``z_T`` with ``student_features``' shape.
        """
        return self.reprogrammer(teacher_features)

    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The student's branch, and with teacher features the teacher branch ``h(Phi(features))``.

        Returns:
            ``student_features`` (z_S), ``student_logits``, and with features ``teacher_features`` (z_T) and
            ``teacher_logits``.
        """
        out = super().trainable_forward(inputs, feats_t)
        if feats_t is not None:
            z_t = self.reprogram(feats_t, out["student_features"])
            out.update(teacher_features=z_t, teacher_logits=self.network.classify(z_t))
        return out

    def loss_terms(self, out: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """:class:`~monai_rd.losses.RDLoss` on both branches."""
        return dict(
            self.loss_function(
                out["student_logits"],
                targets,
                out.get("teacher_logits"),
                out["student_features"],
                out.get("teacher_features"),
            )
        )
