"""Where a training step gets the frozen teacher's features: a cache's rows, the batch, or the live teacher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["TeacherFeatureSource"]


class TeacherFeatureSource:
    """The teacher's features of a batch, without grad, from the first source the batch allows.

    1. rows of a :class:`~monai_rd.data.TeacherFeatureCache` named by the batch (``teacher_index_key``, from
       ``CachedTeacherFeaturesd(output="index")``), gathered on the step's device: the bundles' default;
    2. precomputed features carried in the batch (``teacher_feature_key``);
    3. the live teacher on the batch's images (or on a separate teacher input, ``teacher_input_key``).

    The live teacher is frozen in place (no parameter requires grad), run under ``torch.no_grad()`` in eval mode
    (set again before every call, so a handler calling ``train()`` on it cannot let BatchNorm statistics or
    dropout change), and moved to the step's device only when a batch first needs it, so a teacher whose features
    a cache serves (possibly a huge one) never leaves where it was built.

    Args:
        teacher: the frozen teacher (a :class:`~monai_rd.networks.FrozenTeacher` or any ``nn.Module``), or None.
        feature_cache: a built teacher-feature cache, or None.
        teacher_input_key: batch key of a separate teacher input; None feeds the student's image.
        teacher_feature_key: batch key of precomputed features.
        teacher_index_key: batch key of cache row indices.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        feature_cache: Any | None = None,
        teacher_input_key: str | None = None,
        teacher_feature_key: str = "teacher_features",
        teacher_index_key: str = "teacher_feature_index",
    ) -> None:
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teacher = teacher
        self.feature_cache = feature_cache
        self.teacher_input_key = teacher_input_key
        self.teacher_feature_key = teacher_feature_key
        self.teacher_index_key = teacher_index_key
        self._teacher_device: torch.device | None = None

    def __call__(
        self, batchdata: Mapping, inputs: torch.Tensor, device: torch.device, non_blocking: bool = False
    ) -> torch.Tensor | None:
        """Teacher features for a batch, without grad.

        Args:
            batchdata: the raw batch dict.
            inputs: the student's inputs already on ``device``.
            device: the step's device.
            non_blocking: copy to the device asynchronously.

        Returns:
            (B, C_T, *spatial) or (B, C_T) float features on ``device``, or None when the batch carries none and
            there is no teacher.

        Raises:
            ValueError: the batch names cache rows but there is no cache.
            KeyError: the separate teacher input is missing from the batch.
        """
        if isinstance(batchdata, Mapping) and self.teacher_index_key in batchdata:
            if self.feature_cache is None:
                raise ValueError(
                    f"the batch carries teacher-feature cache rows under {self.teacher_index_key!r} but the trainer "
                    "has no feature_cache; pass the same TeacherFeatureCache as feature_cache=."
                )
            return self.feature_cache.gather(batchdata[self.teacher_index_key], device)
        if isinstance(batchdata, Mapping) and self.teacher_feature_key in batchdata:
            feats = batchdata[self.teacher_feature_key]
            return torch.as_tensor(feats).to(device, non_blocking=non_blocking).float()
        if self.teacher is None:
            return None
        x = inputs
        if self.teacher_input_key is not None:
            if self.teacher_input_key not in batchdata:
                raise KeyError(f"teacher_input_key {self.teacher_input_key!r} is not in the batch ({list(batchdata)}).")
            x = torch.as_tensor(batchdata[self.teacher_input_key]).to(device, non_blocking=non_blocking)
        with torch.no_grad():
            return self.live_teacher(device)(x).detach()

    def live_teacher(self, device: torch.device) -> nn.Module:
        """The teacher on ``device``, in eval mode (moved there once, on first use)."""
        teacher: nn.Module = self.teacher  # type: ignore[assignment]
        if self._teacher_device != torch.device(device):
            teacher.to(device)
            self._teacher_device = torch.device(device)
        teacher.eval()  # every time: a handler may have called train() on it
        return teacher
