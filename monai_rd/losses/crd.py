"""Contrastive representation distillation, in-batch (no memory bank)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_rd.losses._feature_maps import check_pair, pooled

__all__ = ["ContrastiveRepresentationLoss"]


class ContrastiveRepresentationLoss(_Loss):
    """Contrastive representation distillation (CRD; Tian, Krishnan & Isola, ICLR 2020), in-batch variant.

    Student and teacher features (maps are globally average-pooled first) are embedded by two trainable linear
    layers into ``embed_dim`` dimensions and L2-normalised; with ``S = e_S e_T^T / temperature`` (B, B), the loss
    is the symmetric InfoNCE ``(CE(S, i) + CE(S^T, i)) / 2``: each image's student embedding must pick its own
    teacher embedding among the batch's, and vice versa. The original CRD draws 16384 negatives from a memory
    bank of the whole training set, updated with momentum; here the negatives are the other B - 1 images of the
    batch, so the loss needs no per-dataset state and resumes from a checkpoint like any module (its bound,
    ``log B``, is lower than with a memory bank). RepDistiller weights CRD by 0.8. The teacher features never
    receive a gradient; the teacher's embedding layer does (it is trained, as in CRD).

    Args:
        student_features: channels C_S of the student features.
        teacher_features: channels C_T of the teacher features.
        embed_dim: embedding width (128 in CRD).
        temperature: softmax temperature (0.07 in CRD).

    Raises:
        ValueError: ``temperature`` is not positive.
    """

    def __init__(
        self, student_features: int, teacher_features: int, embed_dim: int = 128, temperature: float = 0.07
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.embed_student = nn.Linear(student_features, embed_dim)
        self.embed_teacher = nn.Linear(teacher_features, embed_dim)
        self.temperature = float(temperature)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student features (B, C_S, *spatial) or (B, C_S).
            target: teacher features (B, C_T, *spatial) or (B, C_T).

        Returns:
            Scalar tensor (float32).

        Raises:
            ValueError: mismatched batch sizes, or a batch of one image (no negative to contrast with).
        """
        check_pair(input, target, "ContrastiveRepresentationLoss", maps=False)
        if input.shape[0] < 2:
            raise ValueError("ContrastiveRepresentationLoss needs at least 2 images per batch (in-batch negatives).")
        dtype = self.embed_student.weight.dtype  # cached teacher features may arrive in float16
        e_s = F.normalize(self.embed_student(pooled(input).to(dtype)), dim=1)
        e_t = F.normalize(self.embed_teacher(pooled(target.detach()).to(dtype)), dim=1)
        logits = (e_s @ e_t.T).float() / self.temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
