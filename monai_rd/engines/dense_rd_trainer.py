"""SupervisedTrainer for dense (segmentation) Reprogramming Distillation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai_rd.engines.rd_trainer import RDTrainer
from monai_rd.losses.dense_rd import DenseRDLoss

__all__ = ["DenseRDTrainer"]


class DenseRDTrainer(RDTrainer):
    """Trains a segmentation student and a dense Phi against a frozen teacher (2D or 3D).

    Each iteration: teacher feature maps without grad (a live frozen teacher, precomputed maps under
    ``teacher_feature_key``, or rows of a feature cache), the student's last decoder map ``f_S =
    S.forward_features(x)`` (B, F, *spatial), ``f_T = Phi(features, spatial_size=f_S.shape[2:])`` resampled to the
    same size, the one shared head ``h = S.classify`` on both, the :class:`~monai_rd.losses.DenseRDLoss` terms,
    backward and an optimizer step. Everything else is :class:`~monai_rd.engines.DistillationTrainer`'s: the teacher
    is frozen and kept in eval mode, an optimizer holding its parameters is refused, non-finite losses, gradient norms
    and weights stop training with :class:`~monai_rd.errors.NonFiniteError`, gradient accumulation and clipping, and
    AMP (CUDA autocast with a ``GradScaler``). ``engine.state.output`` holds ``pred`` (student logits, (B, C,
    *spatial)) and ``label`` for MONAI's segmentation metrics and post-transforms, plus ``loss``, ``ce_student``,
    ``ce_teacher`` (the Dice+CE terms), ``kd``, ``cka``, ``alpha`` and ``beta``. The student trained alone
    (Dice+CE) is :class:`~monai_rd.engines.DistillationTrainer` with a DenseRDLoss.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image`` and ``label`` (class indices, (B, 1, *spatial)).
        network: the deployable student with ``forward_features`` returning maps and ``classify`` (a
            :class:`~monai_rd.networks.SegmentationStudent`).
        optimizer: optimizer over the student's and Phi's parameters.
        loss_function: a :class:`~monai_rd.losses.DenseRDLoss`.
        reprogrammer: a dense Phi (``ReprogrammingNet(..., dense=True)``, or any module called as
            ``phi(features, spatial_size=...)``).
        teacher: the teacher returning feature maps, run when a batch carries no cached maps.
        kwargs: the other :class:`~monai_rd.engines.DistillationTrainer` arguments (``teacher_input_key``,
            ``teacher_feature_key``, ``feature_cache``, ``grad_clip_norm``, ``amp``, ``train_handlers``, ...).

    Raises:
        ValueError: the loss is not a DenseRDLoss, Phi is a pooled ReprogrammingNet, or any of RDTrainer's checks.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DenseRDLoss,
        reprogrammer: nn.Module | None = None,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_function, DenseRDLoss):
            raise ValueError(
                "loss_function must be a monai_rd.losses.DenseRDLoss for segmentation, got "
                f"{type(loss_function).__name__}."
            )
        if reprogrammer is not None and getattr(reprogrammer, "dense", True) is False:
            raise ValueError(
                "the reprogrammer pools the teacher's map to a vector; build it with ReprogrammingNet(..., dense=True) "
                "so it returns a map resampled to the student's feature-map size."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            reprogrammer=reprogrammer,
            teacher=teacher,
            **kwargs,
        )

    def reprogram(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """Dense Phi resampled to the student's last decoder map: (B, F, *spatial of ``student_features``)."""
        return self.reprogrammer(teacher_features, spatial_size=tuple(student_features.shape[2:]))  # type: ignore[misc]
