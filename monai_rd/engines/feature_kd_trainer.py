"""Feature distillation's trainer: a loss between the student's last feature map and the teacher's features."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai_rd.engines.distillation_trainer import DistillationTrainer
from monai_rd.networks.feature_map import FeatureMapHook

__all__ = ["FeatureKDTrainer"]


class FeatureKDTrainer(DistillationTrainer):
    """Trains a student on the task plus a feature-distillation term (FitNets, attention transfer, SP, CRD).

    Each iteration: the student's logits ``h(S(x))`` and its last feature map before pooling ``F_S`` (read by a
    forward hook, :class:`~monai_rd.networks.feature_map.FeatureMapHook`), the teacher's features, and the loss
    ``loss(h(z_S), y)["loss"] + weight * feature_loss(F_S, features)``, the feature term reported as
    ``feature_kd``. The feature loss's own trainable parts (a regressor, embeddings) must be in the optimizer.
    The rest is :class:`~monai_rd.engines.DistillationTrainer`'s.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image``, ``label`` and the teacher's cache rows or features.
        network: the deployable student (:class:`~monai_rd.networks.StudentClassifier`).
        optimizer: optimizer over the student's and the feature loss's parameters.
        loss_function: the task loss, called as ``loss(student_logits, target)`` (an RDLoss with no teacher
            branch gives CE with the other terms zero).
        feature_loss: ``f(student_map, teacher_features) -> scalar``.
        feature_loss_weight: its weight in the total loss.
        teacher: the frozen teacher, run when a batch carries no cached features.
        kwargs: the other :class:`~monai_rd.engines.DistillationTrainer` arguments.

    Raises:
        ValueError: no feature loss, or any of DistillationTrainer's checks.
    """

    loss_keys = (*DistillationTrainer.loss_keys, "feature_kd")
    uses_teacher_features = True

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Any,
        feature_loss: nn.Module,
        feature_loss_weight: float = 1.0,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if feature_loss is None:
            raise ValueError("FeatureKDTrainer needs a feature_loss f(student_map, teacher_features).")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            teacher=teacher,
            trainable={"feature_loss": feature_loss},
            **kwargs,
        )
        self.feature_loss_weight = float(feature_loss_weight)
        self._feature_map = FeatureMapHook(getattr(network, "backbone", network))

    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The student's branch, and with teacher features the feature term on its last map."""
        out = super().trainable_forward(inputs, feats_t)
        if feats_t is not None:
            out["feature_kd"] = self.feature_loss(self._feature_map.take(), feats_t)
        return out

    def loss_terms(self, out: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task loss plus the weighted feature term."""
        terms = dict(self.loss_function(out["student_logits"], targets, None, out["student_features"], None))
        if "feature_kd" in out:
            terms["loss"] = terms["loss"] + self.feature_loss_weight * out["feature_kd"]
            terms["feature_kd"] = out["feature_kd"]
        return terms
