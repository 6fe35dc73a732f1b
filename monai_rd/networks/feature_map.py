"""Capture a backbone's last feature map (before global pooling) during its forward pass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["FeatureMapHook"]

_POOLS = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


class FeatureMapHook:
    """Keeps the feature map (B, C, *spatial) a backbone pools into its feature vector, for feature KD.

    The map is the input of the backbone's last adaptive pooling module (torchvision and MONAI ResNets, timm
    models, MONAI DenseNets, MobileNetV3); backbones that pool functionally (torchvision's MobileNetV2 and
    ShuffleNetV2) have no such module, and the last top-level child that returns a map (``features``,
    ``conv5``) is used instead. After each forward pass of the backbone, :attr:`map` holds that tensor, still
    attached to the graph.

    Args:
        backbone: the student's backbone (``StudentClassifier.backbone``).

    Raises:
        ValueError: no adaptive pooling module and no child returning a map.
    """

    def __init__(self, backbone: nn.Module) -> None:
        self.map: torch.Tensor | None = None
        pools = [m for m in backbone.modules() if isinstance(m, _POOLS)]
        if pools:
            self._handles = [pools[-1].register_forward_pre_hook(self._keep_input)]
            return
        children = list(backbone.children())
        if not children:
            raise ValueError(f"cannot find the feature map of {type(backbone).__name__}: it has no submodules.")
        self._handles = [c.register_forward_hook(self._keep_map_output) for c in children]

    def _keep_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.map = args[0]

    def _keep_map_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim >= 3:
            self.map = output

    def take(self) -> torch.Tensor:
        """The map of the last forward pass, cleared so a stale map is never reused.

        Raises:
            RuntimeError: no forward pass left a map (a backbone without a spatial map).
        """
        out, self.map = self.map, None
        if out is None:
            raise RuntimeError(
                "the student's forward pass left no feature map (B, C, *spatial) to distil; feature KD (fitnets, "
                "at, sp, crd) needs a convolutional student."
            )
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
