"""The reprogramming module Phi: teacher output features -> student feature space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

__all__ = ["ReprogrammingNet", "ResidualMLPBlock"]


class ResidualMLPBlock(nn.Module):
    """``x + Linear(act(norm(Linear(x))))`` for vector features.

    Args:
        features: width of the block.
        hidden: hidden width (defaults to ``features``).
    """

    def __init__(self, features: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or features
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, features)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ReprogrammingNet(nn.Module):
    """Phi: maps the teacher's output features to the student's feature space (a vector, or a map when dense).

    For maps (B, C_T, *spatial): a 1x1 projection ``C_T -> width`` (conv, norm, act), then ``num_blocks``
    residual blocks, then global average pooling. ``width`` is ``out_features`` by default (the paper's Φ);
    with ``hidden_channels`` the blocks run at that narrower width and a linear layer after the pooling maps
    to ``out_features`` (a 1x1 conv commutes with average pooling, so this costs nothing spatially).
    ``block="basic"`` uses MONAI's two-3x3-conv ``ResNetBlock``; ``block="bottleneck"`` uses MONAI's
    ``ResNetBottleneck`` (1x1 reduce by 4, 3x3, 1x1 expand), about 8x fewer multiply-adds at the same width.
    For vectors (B, C_T): a linear projection then ``num_blocks`` residual MLP blocks.

    Dense mode (``dense=True``, for segmentation): the same projection and blocks keep the map, a 1x1 convolution
    maps ``width -> out_features`` when they differ, and the result is resampled (bilinear/trilinear) to the spatial
    size of the student decoder's last feature map, passed as ``forward(x, spatial_size)``. All convolutions run at
    the teacher's (coarse) resolution; resampling comes last, which is exact for the final 1x1 convolution (a
    per-voxel affine map commutes with linear interpolation, whose weights sum to 1) and keeps Φ's cost independent
    of the output size.

    Phi sits on the teacher's outputs, never on the input image, so no gradient flows through the teacher.

    Args:
        in_channels: teacher feature channels C_T.
        out_features: student feature width d_S.
        num_blocks: residual blocks after the projection.
        spatial_dims: 2 or 3 for map features; ignored when ``vector_input``.
        block: ``"basic"`` or ``"bottleneck"``.
        vector_input: the teacher returns vectors (B, C_T) rather than maps.
        norm: MONAI norm type for map blocks.
        hidden_channels: width of the projection and blocks for maps; None uses ``out_features``.
        dense: return a map (B, out_features, *spatial_size) instead of a pooled vector.
        align_corners: ``align_corners`` of the dense resampling.

    Raises:
        ValueError: unknown ``block`` or ``spatial_dims``, or ``dense`` with ``vector_input``.
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        num_blocks: int = 2,
        spatial_dims: int = 2,
        block: str = "basic",
        vector_input: bool = False,
        norm: str = "batch",
        hidden_channels: int | None = None,
        dense: bool = False,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if dense and vector_input:
            raise ValueError("dense=True needs map features (B, C_T, *spatial); a vector teacher has no map.")
        self.in_channels = in_channels
        self.out_features = out_features
        self.vector_input = vector_input
        self.spatial_dims = spatial_dims
        self.dense = dense
        self.align_corners = align_corners
        if vector_input:
            self.proj = nn.Sequential(nn.Linear(in_channels, out_features), nn.LayerNorm(out_features), nn.ReLU(True))
            self.blocks = nn.Sequential(*[ResidualMLPBlock(out_features) for _ in range(num_blocks)])
            self.pool = nn.Identity()
            return
        width = hidden_channels or out_features
        conv = Conv[Conv.CONV, spatial_dims]
        norm_t = Norm[norm, spatial_dims]
        self.proj = nn.Sequential(
            conv(in_channels, width, kernel_size=1, bias=False), norm_t(width), nn.ReLU(inplace=True)
        )
        if block == "basic":
            blocks = [ResNetBlock(width, width, spatial_dims=spatial_dims, norm=norm) for _ in range(num_blocks)]
        else:
            if width % ResNetBottleneck.expansion:
                raise ValueError(f"bottleneck blocks need a width divisible by 4, got {width}.")
            planes = width // ResNetBottleneck.expansion
            blocks = [ResNetBottleneck(width, planes, spatial_dims=spatial_dims, norm=norm) for _ in range(num_blocks)]
        self.blocks = nn.Sequential(*blocks)
        if dense:
            # a 1x1 conv at the teacher's resolution plays the part of the pooled mode's Linear
            self.out = conv(width, out_features, kernel_size=1) if width != out_features else nn.Identity()
            return
        pool: list[nn.Module] = [Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten(1)]
        if width != out_features:
            pool.append(nn.Linear(width, out_features))
        self.pool = nn.Sequential(*pool)

    def forward(self, x: torch.Tensor, spatial_size: Sequence[int] | None = None) -> torch.Tensor:
        """
        Args:
            x: teacher features, (B, C_T, *spatial) or (B, C_T).
            spatial_size: dense mode only: the output's spatial size (the student feature map's); None keeps the
                teacher's.

        Returns:
            z_T of shape (B, out_features); dense: f_T of shape (B, out_features, *spatial_size).

        Raises:
            ValueError: the input's channels or rank do not match the module, or ``spatial_size`` has the wrong
                length or is given to a pooled module.
        """
        expected_ndim = 2 if self.vector_input else self.spatial_dims + 2
        if x.ndim != expected_ndim or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ReprogrammingNet expects teacher features of shape (B, {self.in_channels}"
                f"{'' if self.vector_input else ', ' + ', '.join(['*'] * self.spatial_dims)}), got {tuple(x.shape)}; "
                "set in_channels/spatial_dims/vector_input to the teacher's output."
            )
        if not self.dense:
            if spatial_size is not None:
                raise ValueError("spatial_size is for dense=True; a pooled ReprogrammingNet returns (B, out_features).")
            return self.pool(self.blocks(self.proj(x)))
        if spatial_size is not None and len(spatial_size) != self.spatial_dims:
            raise ValueError(
                f"spatial_size {tuple(spatial_size)} must have spatial_dims={self.spatial_dims} values (the student "
                "feature map's spatial size)."
            )
        out = self.out(self.blocks(self.proj(x)))
        if spatial_size is None or tuple(spatial_size) == tuple(out.shape[2:]):
            return out
        mode = ("linear", "bilinear", "trilinear")[self.spatial_dims - 1]
        return F.interpolate(out, size=tuple(int(s) for s in spatial_size), mode=mode, align_corners=self.align_corners)
