"""Attention transfer: match the normalised spatial attention maps of student and teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_rd.losses._feature_maps import check_pair, pool_to

__all__ = ["AttentionTransferLoss", "attention_map"]


def attention_map(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention ``mean_c |x_c|^p``.

    Args:
        x: feature map (B, C, *spatial).
        p: exponent.

    Returns:
        (B, *spatial) float32 tensor.
    """
    return x.float().abs().pow(p).mean(1)


class AttentionTransferLoss(_Loss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as in the authors' code.

    ``mean((q_S - q_T)^2)`` with ``q = normalize(flatten(attention_map(F)))``, L2-normalised per sample, the mean
    over the batch and the grid's positions (the authors' ``at_loss``; RepDistiller weights it by 1000). Maps of
    different channel counts are comparable because the attention sums over channels; a teacher on a different
    grid has its attention map resampled to the student's by adaptive average pooling before normalising.
    The teacher never receives a gradient.

    Args:
        p: exponent of the attention map (2 in the paper).

    Raises:
        ValueError: ``p`` is not positive.
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be positive, got {p}.")
        self.p = float(p)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student feature map (B, C_S, *spatial_S).
            target: teacher feature map (B, C_T, *spatial_T).

        Returns:
            Scalar tensor (float32).

        Raises:
            ValueError: mismatched batch sizes, or vector features on either side.
        """
        check_pair(input, target, "AttentionTransferLoss", maps=True)
        a_s = attention_map(input, self.p)
        a_t = pool_to(attention_map(target.detach(), self.p)[:, None], a_s.shape[1:])[:, 0]
        q_s, q_t = F.normalize(a_s.flatten(1), dim=1), F.normalize(a_t.flatten(1), dim=1)
        return (q_s - q_t).pow(2).mean()
