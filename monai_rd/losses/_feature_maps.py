"""Shape checks and resampling shared by the feature-distillation baselines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["check_pair", "pool_to", "pooled"]

_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def check_pair(student: torch.Tensor, teacher: torch.Tensor, loss: str, maps: bool) -> None:
    """Check a (student, teacher) feature pair before a distillation loss.

    Args:
        student: (B, C_S, *spatial) or (B, C_S).
        teacher: (B, C_T, *spatial) or (B, C_T).
        loss: the loss's name, for the message.
        maps: the loss needs feature maps (spatial dims) on both sides.

    Raises:
        ValueError: the batch sizes differ, a side has fewer than 2 dims, or ``maps`` and a side is a vector.
    """
    if student.ndim < 2 or teacher.ndim < 2:
        raise ValueError(
            f"{loss} expects (B, C, ...) features; got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}."
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss} needs one teacher feature per student feature; got batch sizes {student.shape[0]} (student) "
            f"and {teacher.shape[0]} (teacher)."
        )
    if maps and (student.ndim < 3 or teacher.ndim < 3 or student.ndim != teacher.ndim):
        raise ValueError(
            f"{loss} compares feature maps (B, C, *spatial) of the same spatial rank; got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}. A teacher that returns vectors (e.g. a ViT's "
            "class token) cannot be used with it: use --method sp, crd or kd."
        )


def pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a map (B, C, *spatial) to ``size`` by adaptive average pooling (area means when coarser)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return _ADAPTIVE_AVG[x.ndim - 2](x, tuple(size))


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial dims: (B, C, *spatial) -> (B, C); vectors (B, C) pass through."""
    return x.flatten(2).mean(2) if x.ndim > 2 else x
