"""A frozen foundation model used as a black-box feature extractor."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FrozenTeacher", "tokens_to_map"]


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


class FrozenTeacher(nn.Module):
    """Wraps any ``nn.Module`` as a frozen, black-box teacher that owns its preprocessing.

    Its parameters never require grad, it stays in eval mode even when the trainer calls ``.train()``
    (so BatchNorm statistics and dropout never change), and it always runs under ``torch.no_grad()``.
    Inputs are expected with intensities in [0, 1]; the teacher repeats a single channel to the channels it
    needs, resizes to its native size and applies its own mean/std.

    Args:
        model: the foundation model.
        input_size: native spatial size, e.g. (224, 224); None keeps the input size.
        mean: per-channel mean of the teacher's normalisation (after scaling to [0, 1]).
        std: per-channel std.
        in_channels: channels the model expects (grayscale inputs are repeated to this).
        feature_fn: how to get features from the model: None calls ``model(x)``; a string names a method of
            the model (e.g. ``"forward_features"``); or a callable ``f(model, x)``.
        num_prefix_tokens: for token outputs (B, N, C): leading class/register tokens to drop before reshaping
            to a map.
        autocast_dtype: run the teacher under CUDA/CPU autocast in this dtype (e.g. ``torch.bfloat16``);
            features are returned in float32.
        name: identity of the teacher (used in logs and feature-cache keys).

    Raises:
        ValueError: ``mean``/``std`` lengths differ from ``in_channels``.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: Sequence[int] | None = (224, 224),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        in_channels: int = 3,
        feature_fn: str | Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        num_prefix_tokens: int = 0,
        autocast_dtype: torch.dtype | None = None,
        name: str = "teacher",
    ) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must each have in_channels={in_channels} values.")
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.input_size = tuple(input_size) if input_size is not None else None
        self.in_channels = in_channels
        self.feature_fn = feature_fn
        self.num_prefix_tokens = num_prefix_tokens
        self.autocast_dtype = autocast_dtype
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self._out_channels: int | None = None

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Record ``mode`` but keep the wrapped model in eval mode."""
        self.training = mode
        self.model.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Channel repeat, resize to the native size and normalise.

        Args:
            x: (B, C, *spatial) with intensities in [0, 1]; C is 1 or ``in_channels``.

        Returns:
            (B, in_channels, *input_size) float tensor.

        Raises:
            ValueError: the channel count cannot be mapped to ``in_channels``, or ``input_size`` has another number of
                spatial dims than ``x``.
        """
        # plain tensors: image metadata means nothing for feature maps
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).float()
        if self.input_size is not None and len(self.input_size) != x.ndim - 2:
            raise ValueError(
                f"teacher {self.name!r} resizes to input_size {self.input_size} ({len(self.input_size)} spatial dims), "
                f"but got input {tuple(x.shape)} with {x.ndim - 2}; give --teacher_input_size one size per spatial dim "
                "of the images."
            )
        c = x.shape[1]
        if c != self.in_channels:
            if c != 1:
                raise ValueError(
                    f"teacher {self.name!r} takes {self.in_channels} channels or 1 (repeated); got input {tuple(x.shape)}."
                )
            x = x.expand(-1, self.in_channels, *x.shape[2:])
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            mode = "bilinear" if len(self.input_size) == 2 else "trilinear"
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_fn is None:
            return self.model(x)
        if isinstance(self.feature_fn, str):
            return getattr(self.model, self.feature_fn)(x)
        return self.feature_fn(self.model, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, *spatial) images in [0, 1].

        Returns:
            Features (B, C_T, *spatial_T) or (B, C_T), float32, without grad.
        """
        with torch.no_grad():
            return self.extract(x)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with autograd left as the caller set it: only for adapting the teacher before it is
        used frozen (``monai_rd.engines.adapt_teacher``).

        Args:
            x: (B, C, *spatial) images in [0, 1].

        Returns:
            Features (B, C_T, *spatial_T) or (B, C_T), float32.
        """
        x = self.preprocess(x)
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                feats = self._features(x)
        else:
            feats = self._features(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        if feats.ndim == 3:  # ViT tokens (B, N, C)
            feats = tokens_to_map(feats, self.num_prefix_tokens)
        return feats.float()

    @property
    def out_channels(self) -> int:
        """Channels C_T of the feature output, found with one dry run at the native size."""
        if self._out_channels is None:
            size = self.input_size or (224, 224)
            device = next(self.model.parameters(), torch.empty(0)).device
            dummy = torch.zeros(1, self.in_channels, *size, device=device)
            self._out_channels = int(self.forward(dummy).shape[1])
        return self._out_channels

    def fingerprint(self) -> str:
        """SHA-256 of the teacher's identity: name, preprocessing and every parameter and buffer.

        Returns:
            Hex digest; changes whenever the weights, the feature layer or the preprocessing change.
        """
        h = hashlib.sha256()
        fn = self.feature_fn if isinstance(self.feature_fn, str) or self.feature_fn is None else repr(self.feature_fn)
        h.update(repr((self.name, self.input_size, self.in_channels, fn, self.num_prefix_tokens)).encode())
        h.update(self.mean.cpu().numpy().tobytes() + self.std.cpu().numpy().tobytes())
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        return h.hexdigest()
