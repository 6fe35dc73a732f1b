"""A frozen foundation model used as a black-box feature extractor."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_rd.networks.token_maps import tokens_to_map

if TYPE_CHECKING:
    from monai_rd.networks.stage_taps import StageTaps

__all__ = ["FrozenTeacher", "tokens_to_map"]


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
        stage_taps: where the named intermediate maps of :meth:`stage_maps` come from (Deep RD); None for a teacher
            without them.
        stages: which taps :meth:`stage_maps` returns; None is ``stage_taps.default``.

    Raises:
        ValueError: ``mean``/``std`` lengths differ from ``in_channels``, or ``stages`` names no tap.
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
        stage_taps: StageTaps | None = None,
        stages: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"mean {tuple(mean)} and std {tuple(std)} must each have in_channels={in_channels} values."
            )
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
        # a plain attribute, not a submodule: the state_dict and fingerprint() are the same with or without taps
        self.stage_taps = stage_taps
        self._stages: tuple[str, ...] = ()
        self._stage_locations: list = []
        self._stage_shapes: tuple[tuple[int, ...], ...] | None = None
        if stages is not None:
            self.select_stages(stages)
        elif stage_taps is not None and stage_taps.default:
            self.select_stages(stage_taps.default)

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
                    f"teacher {self.name!r} takes {self.in_channels} channels or 1 (repeated); "
                    f"got input {tuple(x.shape)}."
                )
            x = x.expand(-1, self.in_channels, *x.shape[2:])
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            mode = "bilinear" if len(self.input_size) == 2 else "trilinear"
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def _autocast(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

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
        with self._autocast(x):
            feats = self._features(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        if feats.ndim == 3:  # ViT tokens (B, N, C)
            feats = tokens_to_map(feats, self.num_prefix_tokens)
        return feats.float()

    def _dry_run_input(self) -> torch.Tensor:
        size = self.input_size or (224, 224)
        device = next(self.model.parameters(), torch.empty(0)).device
        return torch.zeros(1, self.in_channels, *size, device=device)

    @property
    def out_channels(self) -> int:
        """Channels C_T of the feature output, found with one dry run at the native size."""
        if self._out_channels is None:
            self._out_channels = int(self.forward(self._dry_run_input()).shape[1])
        return self._out_channels

    # ----------------------------------------------------------------------------------------- stage taps (DRD)
    def _taps(self) -> StageTaps:
        if self.stage_taps is None:
            raise ValueError(
                f"teacher {self.name!r} has no stage taps, so Deep RD cannot use it. Named teachers declare them in "
                "their builder (FrozenTeacher(..., stage_taps=...), listed as TeacherSpec.stages); timm:, "
                "torchvision: and monai: teachers get them by rule (monai: networks without layer1..layer4 take "
                "create_teacher(..., stages=[<submodule paths>])). A custom FrozenTeacher takes "
                "stage_taps=monai_rd.networks.stage_taps.HookTaps([<submodule paths>])."
            )
        return self.stage_taps

    def _require_taps(self) -> StageTaps:
        taps = self._taps()
        if not self._stages:
            raise ValueError(
                f"teacher {self.name!r} has no default stage taps; name them with create_teacher(..., stages=[...]) "
                "or teacher.select_stages([...]) (submodule paths such as 'layer1', shallow to deep)."
            )
        return taps

    def select_stages(self, stages: Sequence[str]) -> FrozenTeacher:
        """Choose the taps :meth:`stage_maps` returns.

        Args:
            stages: tap names, shallow to deep (see :attr:`stage_taps`; the default is ``stage_taps.default``).

        Returns:
            This teacher.

        Raises:
            ValueError: the teacher has no taps, or a name is not one of them (the message lists them).
        """
        locations = self._taps().resolve(self.model, stages, self.name)
        self._stages, self._stage_locations = tuple(str(s) for s in stages), locations
        self._stage_shapes = None
        return self

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the N maps :meth:`stage_maps` returns, shallow to deep.

        Raises:
            ValueError: the teacher has no stage taps, or none selected.
        """
        self._require_taps()
        return self._stages

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's N stage maps f_1^T .. f_N^T, with the preprocessing of :meth:`forward`.

        Args:
            x: (B, C, *spatial) images in [0, 1].

        Returns:
            N tensors (B, C_i, *spatial_i), float32, without grad; ViT tokens come back as maps.

        Raises:
            ValueError: the teacher has no stage taps.
            RuntimeError: a tap did not give a map with as many spatial axes as the input.
        """
        taps = self._require_taps()
        with torch.no_grad():
            x = self.preprocess(x)
            with self._autocast(x):
                maps = taps.maps(self.model, x, self._stage_locations)
        bad = [n for n, m in zip(self._stages, maps) if m.ndim != x.ndim]
        if bad:
            raise RuntimeError(f"teacher {self.name!r}: stage taps {bad} did not give (B, C, *spatial) maps.")
        return [m.float() for m in maps]

    @property
    def stage_shapes(self) -> tuple[tuple[int, ...], ...]:
        """(C_i, *spatial_i) of each stage map at the native input size, found with one dry run."""
        if self._stage_shapes is None:
            self._stage_shapes = tuple(tuple(m.shape[1:]) for m in self.stage_maps(self._dry_run_input()))
        return self._stage_shapes

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels C_i of each stage map, found with one dry run at the native size."""
        return tuple(int(s[0]) for s in self.stage_shapes)

    def stage_fingerprint(self) -> str:
        """SHA-256 of what :meth:`stage_maps` computes: :meth:`fingerprint` plus the selected taps and where they
        come from. The key of a cache of stage maps; :meth:`fingerprint` itself does not depend on the taps, so
        caches of :meth:`forward` features stay valid.

        Returns:
            Hex digest; changes with the weights, the preprocessing, the selected taps or their definition.

        Raises:
            ValueError: the teacher has no stage taps.
        """
        taps = self._require_taps()
        h = hashlib.sha256(self.fingerprint().encode())
        h.update(repr(("stages", self._stages, taps.identity())).encode())
        return h.hexdigest()

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
            h.update(
                v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b""
            )
        return h.hexdigest()
