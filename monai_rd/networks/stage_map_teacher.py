"""A frozen teacher's Deep RD stage maps packed into one tensor per image, so a feature cache can store them.

:class:`~monai_rd.data.TeacherFeatureCache` stores one array row per image (the output of ``teacher(x)``) and keys
its rows by ``teacher.fingerprint()``. :class:`StageMapTeacher` wraps a
:class:`~monai_rd.networks.FrozenTeacher` so that ``forward`` returns its N selected stage maps (optionally pooled)
flattened and concatenated, ``(B, D)``, and ``fingerprint()`` is the teacher's
:meth:`~monai_rd.networks.FrozenTeacher.stage_fingerprint` plus the stored shapes: the existing cache then serves the
stage maps unchanged (memory-mapped, keyed, built once), and :meth:`StageMapTeacher.unpack` turns a gathered row
block back into the N maps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_rd.networks.frozen_teacher import FrozenTeacher

__all__ = ["StageMapTeacher"]


class StageMapTeacher(nn.Module):
    """The N stage maps of a frozen teacher as one tensor per image: (B, D), ``D = sum_i C_i * prod(s_i)``.

    Pooling (``out_sizes``): each stage map is average-pooled (adaptively, per axis) to at most ``out_sizes[i]``,
    e.g. the size of the student's stage-i map, before it is returned (and so before it is cached). An axis where
    the teacher's map is already smaller is kept. This bounds the cache: EfficientNet-Lite0's four maps at 224 px
    are 191,296 values per image, 15,616 pooled to a ResNet-18's stage sizes at 64 px (16, 8, 4, 2). What it trades:

    - nothing the current projector uses: :class:`~monai_rd.networks.StageProjector` shrinks a larger map with
      the same adaptive average pooling as its first operation, so phi_i computes the same map from the pooled
      cache (up to the storage dtype's rounding, which then happens after the pooling instead of before);
    - the full-resolution map itself: a projector that would look at the teacher's fine detail before reducing it
      (strided convolutions, attention) cannot be trained from a pooled cache;
    - reuse: the pooled sizes depend on the student and its input size, and enter :meth:`fingerprint`, so a cache
      built for one student is not served to a student with other stage sizes.

    The wrapper is frozen with its teacher (no parameter of its own) and holds the teacher as a submodule, so
    moving or freezing the wrapper moves or freezes the teacher.

    Args:
        teacher: a frozen teacher with stage taps (:meth:`~monai_rd.networks.FrozenTeacher.stage_maps`); its
            selected taps are the maps returned.
        out_sizes: per selected tap, the largest spatial size to keep (None for a tap, or for all: unpooled).

    Raises:
        ValueError: the teacher has no stage taps, or ``out_sizes`` has another length than the taps or a size with
            another number of axes than the map.

    Example:
        >>> packer = StageMapTeacher(create_teacher("efficientnet-lite0"), out_sizes=[(16, 16), (8, 8), (4, 4), (2, 2)])
        >>> packed = packer(images)  # (B, 15616)
        >>> maps = packer.unpack(packed)  # [(B, 24, 16, 16), (B, 40, 8, 8), (B, 112, 4, 4), (B, 1280, 2, 2)]
    """

    def __init__(self, teacher: FrozenTeacher, out_sizes: Sequence[Sequence[int] | None] | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        names = teacher.stage_names  # raises, naming what to do, for a teacher without taps
        native = teacher.stage_shapes  # one dry run at the teacher's native size
        sizes = list(out_sizes) if out_sizes is not None else [None] * len(names)
        if len(sizes) != len(names):
            raise ValueError(f"out_sizes has {len(sizes)} entries for the teacher's {len(names)} stage taps {names}.")
        shapes = []
        for name, shape, size in zip(names, native, sizes):
            if size is not None and len(size) != len(shape) - 1:
                raise ValueError(f"out_sizes {tuple(size)} of tap {name!r} needs one size per axis of its map {shape}.")
            spatial = shape[1:] if size is None else tuple(min(int(s), int(t)) for s, t in zip(shape[1:], size))
            shapes.append((int(shape[0]), *spatial))
        self.stage_shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        self.pooled = out_sizes is not None

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The teacher's selected taps, shallow to deep."""
        return self.teacher.stage_names

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels C_i of each stage map."""
        return tuple(s[0] for s in self.stage_shapes)

    @property
    def numel(self) -> int:
        """Values per image in the packed tensor (D)."""
        return sum(math.prod(s) for s in self.stage_shapes)

    def pack(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pool each map to its stored shape and concatenate them flattened.

        Args:
            maps: the teacher's N stage maps (B, C_i, *spatial_i).

        Returns:
            (B, D).

        Raises:
            ValueError: a map cannot take its stored shape (another channel count, or, unpooled, another size:
                a teacher without a fixed ``input_size`` fed images of another size).
        """
        flat = []
        for name, m, shape in zip(self.stage_names, maps, self.stage_shapes):
            if tuple(m.shape[2:]) != shape[1:] and all(a >= b for a, b in zip(m.shape[2:], shape[1:])):
                m = getattr(F, f"adaptive_avg_pool{m.ndim - 2}d")(m, shape[1:])
            if tuple(m.shape[1:]) != shape:
                raise ValueError(
                    f"teacher stage map {name!r} is {tuple(m.shape[1:])}, the packed layout holds {shape}; give the "
                    "teacher a fixed input_size (the maps' shapes are found once, at that size)."
                )
            flat.append(m.reshape(m.shape[0], -1))
        return torch.cat(flat, dim=1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """The N stage maps from packed rows (a :meth:`forward` output or a cache's gathered rows).

        Args:
            packed: (B, D).

        Returns:
            N views (B, C_i, *spatial_i) of ``packed``.

        Raises:
            ValueError: ``packed`` is not (B, D) (rows of another cache or teacher).
        """
        if packed.ndim != 2 or packed.shape[1] != self.numel:
            raise ValueError(
                f"packed stage maps must be (B, {self.numel}) for the taps {self.stage_names} with shapes "
                f"{self.stage_shapes}; got {tuple(packed.shape)} (rows of another cache or teacher?)."
            )
        parts = torch.split(packed, [math.prod(s) for s in self.stage_shapes], dim=1)
        return [p.reshape(packed.shape[0], *s) for p, s in zip(parts, self.stage_shapes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, *spatial) images in [0, 1] (the teacher resizes and normalises them).

        Returns:
            (B, D) float32 packed stage maps, without grad.
        """
        return self.pack(self.teacher.stage_maps(x))

    def fingerprint(self) -> str:
        """SHA-256 of what :meth:`forward` computes: the teacher's :meth:`~monai_rd.networks.FrozenTeacher.
        stage_fingerprint` (weights, preprocessing, selected taps) and the stored shapes (the pooling).

        Returns:
            Hex digest; the key of a :class:`~monai_rd.data.TeacherFeatureCache` of this wrapper.
        """
        h = hashlib.sha256(self.teacher.stage_fingerprint().encode())
        h.update(repr(("stage_map_teacher", self.stage_shapes)).encode())
        return h.hexdigest()
