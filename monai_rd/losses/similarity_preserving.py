"""Similarity-preserving distillation: match the batch's pairwise similarity matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_rd.losses._feature_maps import check_pair

__all__ = ["SimilarityPreservingLoss", "similarity_matrix"]


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Row-normalised Gram matrix of a batch: ``normalize(Q Q^T)`` with ``Q = flatten(x)`` (B, B).

    Args:
        x: features (B, C, *spatial) or (B, C).

    Returns:
        (B, B) float32 tensor, each row of unit L2 norm.
    """
    q = x.float().flatten(1)
    return F.normalize(q @ q.T, dim=1)


class SimilarityPreservingLoss(_Loss):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``||G_S - G_T||_F^2 / B^2``.

    ``G`` is :func:`similarity_matrix` of the flattened activations, so student and teacher may differ in
    channels and grid: only which images of the batch look alike is transferred. RepDistiller weights it by
    3000. The teacher never receives a gradient.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student features (B, C_S, *spatial) or (B, C_S).
            target: teacher features (B, C_T, *spatial) or (B, C_T).

        Returns:
            Scalar tensor (float32).

        Raises:
            ValueError: mismatched batch sizes.
        """
        check_pair(input, target, "SimilarityPreservingLoss", maps=False)
        diff = similarity_matrix(input) - similarity_matrix(target.detach())
        return diff.pow(2).sum() / input.shape[0] ** 2
