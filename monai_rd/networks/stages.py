"""How a network is cut into N coarse stages for Deep Reprogramming Distillation (DRD).

DRD aligns a teacher's stage i with a student's stage i, so both are cut the same way: by resolution. A stage ends
with the last module that works at one resolution, and the N stages are the last N resolutions the network reaches
(for a ResNet: layer1 at /4 to layer4 at /32). Networks that keep one resolution throughout (ViTs) are cut at
evenly spaced depths instead. These helpers read a network's modules only: they run nothing and create nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_NUM_STAGES",
    "dry_run_stage_shapes",
    "evenly_spaced",
    "reduces_resolution",
    "stage_index",
    "stride_stage_ends",
]

DEFAULT_NUM_STAGES = 4

# modules whose ``stride`` shrinks the map (adaptive pools have no stride and keep no fixed ratio)
_STRIDED = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


def reduces_resolution(module: nn.Module) -> bool:
    """Whether running ``module`` shrinks the spatial size: it holds a strided convolution or pooling layer.

    Args:
        module: a block of a network (e.g. a ResNet's ``layer2``, a MobileNet ``features[2]``).

    Returns:
        True when one of its convolutions (not transposed) or max/average pools has a stride above 1.
    """
    for m in module.modules():
        if isinstance(m, _STRIDED) and not getattr(m, "transposed", False):
            stride = m.stride if isinstance(m.stride, (tuple, list)) else (m.stride,)
            if any(int(s) > 1 for s in stride if s is not None):
                return True
    return False


def stride_stage_ends(
    named_modules: Sequence[tuple[str, nn.Module]], num_stages: int = DEFAULT_NUM_STAGES
) -> list[str]:
    """The names ending each stage of a network run as a sequence of modules: the last module at each of the last
    ``num_stages`` resolutions.

    A module that shrinks the map (:func:`reduces_resolution`) starts a new resolution. The last module of the
    sequence ends the last stage, so what follows the last stage is pooling only. Fewer resolutions give fewer
    stages.

    Args:
        named_modules: ``(name, module)`` in the order the forward runs them, e.g. a torchvision ResNet's
            ``conv1 ... layer4`` or a MobileNet's ``features.0 ... features.18``.
        num_stages: how many stages N (4 by default).

    Returns:
        Up to ``num_stages`` names, shallow to deep; e.g. ``["layer1", "layer2", "layer3", "layer4"]`` for a ResNet.

    Raises:
        ValueError: no modules, or ``num_stages < 1``.
    """
    if num_stages < 1 or not named_modules:
        raise ValueError(f"cannot cut {len(named_modules)} modules into {num_stages} stages.")
    last_at_level: dict[int, str] = {}
    level = 0
    for name, module in named_modules:
        level += int(reduces_resolution(module))
        last_at_level[level] = name
    ends = [last_at_level[k] for k in sorted(last_at_level)]
    return ends[-num_stages:]


def evenly_spaced(depth: int, num_stages: int = DEFAULT_NUM_STAGES) -> list[int]:
    """Indices of ``num_stages`` blocks evenly spaced over ``depth`` blocks, the last block last.

    Args:
        depth: number of blocks (e.g. 12 for a ViT-B).
        num_stages: how many.

    Returns:
        Sorted distinct 0-based indices, e.g. ``[2, 5, 8, 11]`` for 12 blocks and 4 stages; fewer when
        ``depth < num_stages``.
    """
    return sorted({max(0, round((k + 1) * depth / num_stages) - 1) for k in range(num_stages)})


def stage_index(i: int, num_stages: int) -> int:
    """Check a 0-based stage index.

    Args:
        i: the index.
        num_stages: N.

    Returns:
        ``i``.

    Raises:
        IndexError: ``i`` is not an int in ``0 .. N - 1``.
    """
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_stages:
        raise IndexError(f"stage index {i!r} is out of range: there are {num_stages} stages, 0 to {num_stages - 1}.")
    return i


def dry_run_stage_shapes(student: nn.Module, spatial_size: Sequence[int]) -> list[tuple[int, ...]]:
    """(C_i, *spatial_i) of a student's stage maps (``student.forward_stages``) for inputs of ``spatial_size``.

    One forward of a zero image in eval mode without grad, the mode restored after: normalisation statistics are
    not updated and dropout draws no random numbers.

    Args:
        student: a model with ``forward_stages``; its input channels are those of its first convolution.
        spatial_size: input size, e.g. (64, 64).

    Returns:
        One shape per stage.
    """
    conv = next(m for m in student.modules() if isinstance(m, nn.modules.conv._ConvNd))
    param = next(student.parameters())
    x = torch.zeros(1, conv.in_channels, *spatial_size, device=param.device, dtype=param.dtype)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            return [tuple(m.shape[1:]) for m in student.forward_stages(x)]  # type: ignore[operator]
    finally:
        student.train(was_training)
