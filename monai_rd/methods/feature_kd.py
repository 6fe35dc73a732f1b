"""Feature distillation baselines: FitNets, attention transfer, similarity-preserving KD and CRD."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from monai_rd import losses
from monai_rd.engines.feature_kd_trainer import FeatureKDTrainer
from monai_rd.methods.method import Method

__all__ = ["FEATURE_LOSSES", "FeatureKD"]

#: the feature-distillation terms by name, each built as ``f(student_channels, teacher_channels, spatial_dims)``
FEATURE_LOSSES = {
    "fitnets": lambda s, t, dims: losses.FitNetsLoss(s, t, spatial_dims=dims),
    "at": lambda s, t, dims: losses.AttentionTransferLoss(),
    "sp": lambda s, t, dims: losses.SimilarityPreservingLoss(),
    "crd": lambda s, t, dims: losses.ContrastiveRepresentationLoss(s, t),
}


class FeatureKD(Method):
    """The student learns from the teacher's features through a feature-distillation term added to its CE, weighted
    ``--distill_weight`` (RepDistiller's benchmark values by default), with
    :class:`~monai_rd.engines.FeatureKDTrainer`: FitNets (a 1x1-conv regressor from the student's last map to the
    teacher's), attention transfer, similarity-preserving KD, or CRD (in-batch negatives).

    Args:
        options: the run's validated options.
        feature_loss: a key of :data:`FEATURE_LOSSES`.
        components: :class:`~monai_rd.methods.Method`'s.
    """

    uses_teacher: ClassVar[bool] = True
    trainer_class = FeatureKDTrainer

    def __init__(self, options: Any, feature_loss: str, **components: Any) -> None:
        super().__init__(options, **components)
        self.feature_loss_name = feature_loss
        self.feature_loss: nn.Module | None = None

    def build_parts(self) -> None:
        """The feature loss (FitNets' regressor is initialised right after the student)."""
        self.feature_loss = FEATURE_LOSSES[self.feature_loss_name](
            self.student.num_features, self.teacher.out_channels, self.options.spatial_dims
        )

    def trainable_parts(self) -> dict[str, nn.Module]:  # noqa: D102
        return {"feature_loss": self.feature_loss}

    def trainer_kwargs(self) -> dict[str, Any]:  # noqa: D102
        return {**super().trainer_kwargs(), "feature_loss": self.feature_loss,
                "feature_loss_weight": self.options.distill_weight}
