"""The stage projectors phi_i of Deep Reprogramming Distillation (DRD): teacher stage maps -> student stage shapes.

DRD feeds phi_i(f_i^T), the teacher's stage-i map reprogrammed to the student's stage-i shape, into the student's
own later stages (``StudentClassifier.forward_from`` / ``SegmentationStudent.forward_from``), and aligns it with the
student's own stage-i map. phi_i sits on the teacher's outputs, never on the image, so no gradient reaches the
teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

__all__ = ["StageProjector", "build_stage_projectors"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _num_groups(channels: int) -> int:
    """GroupNorm groups for ``channels``: up to 8, and at least 2 channels per group where possible, so a group is
    never a single value on a 1 x 1 map (which would normalise to 0)."""
    groups = math.gcd(channels, 8)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


class StageProjector(nn.Module):
    """phi_i: (B, C_T, *s_T) teacher stage map -> (B, C_S, *s_S), the shape of the student's stage-i map.

    Three layers: 3x3 conv-norm-act, 3x3 conv-norm-act, 1x1 conv (no norm or activation, so the output can take the
    student map's range, e.g. negative values before a residual sum). The spatial size is matched per axis to the
    target size (given at call time, else at construction, else the input's):

    - shrinking: adaptive average pooling *before* the first convolution: every convolution then runs at the small
      size (a teacher map can be much larger than the student's, e.g. LVM-Med ViT's 64 x 64), and averaging keeps
      every teacher position's contribution, where a strided sampling would drop most of them;
    - growing: (bi/tri)linear interpolation (``align_corners=False``) *after* the first convolution: the
      channel-reducing convolution runs at the teacher's coarser size, and the second 3x3 convolution, at the target
      size, refines the interpolated map (pooling cannot enlarge a map).

    Norm: GroupNorm by default (up to 8 groups, :func:`_num_groups`): it does not depend on the batch, which may be
    2 in 3D segmentation (BatchNorm statistics would be noise, and its running statistics would make train and eval
    differ), and it stays defined on the 1 x 1 or 2 x 2 maps of the deepest classification stages, where
    InstanceNorm normalises each channel's one value to 0 (and PyTorch refuses it in training).

    Args:
        in_channels: teacher channels C_T.
        out_channels: student channels C_S.
        spatial_dims: 1, 2 or 3.
        hidden_channels: width of the two 3x3 convolutions; None uses ``out_channels``.
        out_size: default target spatial size s_S; None keeps the input's unless given to :meth:`forward`.
        norm: MONAI norm spec overriding the GroupNorm default (e.g. ``"batch"``, ``("instance", {"affine": True})``).
        act: MONAI activation spec.

    Raises:
        ValueError: ``spatial_dims`` not 1-3, channels < 1, or ``out_size`` of another length.

    Example:
        >>> phi = StageProjector(1280, 512, spatial_dims=2)
        >>> phi(torch.rand(2, 1280, 7, 7), out_size=(2, 2)).shape
        torch.Size([2, 512, 2, 2])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        hidden_channels: int | None = None,
        out_size: Sequence[int] | None = None,
        norm: str | tuple | None = None,
        act: str | tuple = "RELU",
    ) -> None:
        super().__init__()
        if spatial_dims not in _MODES:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        hidden = int(hidden_channels or out_channels)
        if min(in_channels, out_channels, hidden) < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}, hidden={hidden}.")
        if out_size is not None and len(out_size) != spatial_dims:
            raise ValueError(f"out_size {tuple(out_size)} must have spatial_dims={spatial_dims} values.")
        norm = norm if norm is not None else ("GROUP", {"num_groups": _num_groups(hidden)})
        self.in_channels, self.out_channels, self.hidden_channels = int(in_channels), int(out_channels), hidden
        self.spatial_dims = spatial_dims
        self.out_size = tuple(int(s) for s in out_size) if out_size is not None else None
        self.conv1 = Convolution(spatial_dims, in_channels, hidden, kernel_size=3, norm=norm, act=act)
        self.conv2 = Convolution(spatial_dims, hidden, hidden, kernel_size=3, norm=norm, act=act)
        self.conv3 = Convolution(spatial_dims, hidden, out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """
        Args:
            x: teacher stage map (B, C_T, *s_T).
            out_size: target spatial size s_S (the student stage map's ``shape[2:]``); None uses the size given at
                construction, else keeps s_T.

        Returns:
            (B, C_S, *s_S).

        Raises:
            ValueError: ``x`` does not have ``in_channels`` and ``spatial_dims`` axes, or ``out_size`` has another
                length.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"StageProjector expects (B, {self.in_channels}, {', '.join(['*'] * self.spatial_dims)}), got "
                f"{tuple(x.shape)}: build it with the teacher stage's channels and the images' spatial_dims."
            )
        size = tuple(int(s) for s in (out_size if out_size is not None else self.out_size or x.shape[2:]))
        if len(size) != self.spatial_dims:
            raise ValueError(f"out_size {size} must have spatial_dims={self.spatial_dims} values.")
        smaller = tuple(min(s, t) for s, t in zip(x.shape[2:], size))
        if smaller != tuple(x.shape[2:]):
            x = getattr(F, f"adaptive_avg_pool{self.spatial_dims}d")(x, smaller)
        x = self.conv1(x)
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode=_MODES[self.spatial_dims], align_corners=False)
        return self.conv3(self.conv2(x))


def build_stage_projectors(
    teacher_channels: Sequence[int],
    student_channels: Sequence[int],
    spatial_dims: int = 2,
    hidden_channels: Sequence[int | None] | int | None = None,
    out_sizes: Sequence[Sequence[int] | None] | None = None,
    **kwargs,
) -> nn.ModuleList:
    """One :class:`StageProjector` per stage: teacher stage i -> student stage i.

    Args:
        teacher_channels: C_i^T per stage (``FrozenTeacher.stage_channels``).
        student_channels: C_i^S per stage (``stage_shapes(...)[i][0]`` of the student).
        spatial_dims: 1, 2 or 3.
        hidden_channels: one width for all, or one per stage; None uses each stage's student channels.
        out_sizes: optional default target size per stage.
        kwargs: passed to every :class:`StageProjector` (``norm``, ``act``).

    Returns:
        ``nn.ModuleList`` of N projectors (built in stage order, drawing from the global RNG for their weights).

    Raises:
        ValueError: the lists have different lengths.
    """
    n = len(teacher_channels)
    hidden = list(hidden_channels) if isinstance(hidden_channels, Sequence) else [hidden_channels] * n
    sizes = list(out_sizes) if out_sizes is not None else [None] * n
    if not n or len(student_channels) != n or len(hidden) != n or len(sizes) != n:
        raise ValueError(
            f"one entry per stage: {n} teacher stages, {len(student_channels)} student stages, {len(hidden)} hidden "
            f"widths, {len(sizes)} sizes; pick as many teacher taps (create_teacher(..., stages=...)) as the student "
            "has stages."
        )
    return nn.ModuleList(
        StageProjector(t, s, spatial_dims, h, size, **kwargs)
        for t, s, h, size in zip(teacher_channels, student_channels, hidden, sizes)
    )
