"""Vision-transformer tokens as the feature maps Reprogramming Distillation reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["tokens_to_map"]


def tokens_to_map(tokens: torch.Tensor, num_prefix_tokens: int = 0, grid: Sequence[int] | None = None) -> torch.Tensor:
    """Reshape ViT tokens (B, N, C) into a feature map (B, C, H, W).

    Args:
        tokens: (B, N, C) token sequence.
        num_prefix_tokens: class/register tokens at the front, dropped.
        grid: (H, W) of the patch grid; inferred for square grids when None.

    Returns:
        (B, C, H, W) tensor.

    Raises:
        ValueError: the patch tokens do not form the given or a square grid.
    """
    patches = tokens[:, num_prefix_tokens:, :]
    b, n, c = patches.shape
    if grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(
                f"cannot reshape {n} patch tokens into a square grid; pass grid=(H, W) or num_prefix_tokens."
            )
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} does not hold {n} patch tokens.")
    return patches.transpose(1, 2).reshape(b, c, *grid)
