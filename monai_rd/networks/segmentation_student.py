"""The deployable segmentation student: a MONAI encoder-decoder exposing its last decoder feature map, plus the
shared 1x1-conv segmentation head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import ADN
from monai.networks.layers.factories import Conv
from monai.networks.nets import BasicUNet, SegResNet, UNet

from monai_rd.networks.segmentation_stages import SegmentationStages, segmentation_stages
from monai_rd.networks.stages import dry_run_stage_shapes, stage_index

__all__ = ["SegmentationStudent", "create_segmentation_backbone", "list_segmentation_students"]


def _unet(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> tuple[nn.Module, nn.Module, int]:
    # MONAI's UNet fuses its last decoder convolution with the output projection (a conv without norm/activation);
    # we build that layer at the first level's width and add the norm/activation UNet uses elsewhere, so the
    # features are a real decoder map and the shared head is the only projection to classes
    kwargs.setdefault("channels", (16, 32, 64, 128))
    kwargs.setdefault("strides", (2,) * (len(kwargs["channels"]) - 1))
    kwargs.setdefault("num_res_units", 2)
    width = int(kwargs.pop("feature_channels", kwargs["channels"][0]))
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=width, **kwargs)
    adn = ADN(
        ordering="NA",
        in_channels=width,
        act=kwargs.get("act", "PRELU"),
        norm=kwargs.get("norm", "INSTANCE"),
        norm_dim=spatial_dims,
    )
    head = Conv[Conv.CONV, spatial_dims](width, num_classes, kernel_size=1)
    return nn.Sequential(net, adn), head, width


def _basicunet(
    spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any
) -> tuple[nn.Module, nn.Module, int]:
    # BasicUNet ends in a 1x1 conv on the last decoder map u1: that conv is the head
    net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    head, net.final_conv = net.final_conv, nn.Identity()
    return net, head, int(head.in_channels)


def _segresnet(
    spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any
) -> tuple[nn.Module, nn.Module, int]:
    # SegResNet's final block is norm -> act -> 1x1 conv: the first two stay in the backbone, the conv is the head
    net = SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    if not net.use_conv_final:
        raise ValueError("SegResNet students need use_conv_final=True (its final 1x1 conv becomes the shared head).")
    head = net.conv_final[-1]
    head = getattr(head, "conv", head)  # MONAI's Convolution wraps the plain conv (conv_only: nothing else)
    net.conv_final = net.conv_final[:-1]
    return net, head, int(net.init_filters)


_BUILDERS: dict[str, Callable[..., tuple[nn.Module, nn.Module, int]]] = {
    "unet": _unet,
    "basicunet": _basicunet,
    "segresnet": _segresnet,
}


def list_segmentation_students() -> list[str]:
    """Names accepted by :func:`create_segmentation_backbone`.

    Returns:
        Sorted names.
    """
    return sorted(_BUILDERS)


def create_segmentation_backbone(
    name: str, spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2, **kwargs: Any
) -> tuple[nn.Module, nn.Module, int]:
    """Build a MONAI segmentation network split into its feature part and its 1x1-conv head.

    Args:
        name: ``"unet"`` (:class:`monai.networks.nets.UNet`; defaults ``channels=(16, 32, 64, 128)``, strides 2,
            ``num_res_units=2``; ``feature_channels`` sets the decoder's last width, ``channels[0]`` by default),
            ``"basicunet"`` (:class:`~monai.networks.nets.BasicUNet`) or ``"segresnet"``
            (:class:`~monai.networks.nets.SegResNet`).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes of the head (background included).
        kwargs: passed to the MONAI constructor (e.g. ``channels``, ``features``, ``init_filters``).

    Returns:
        ``(backbone, head, feature_channels)``: ``backbone(x)`` is the last decoder feature map
        (B, feature_channels, *spatial) at the input's resolution and ``head`` a 1x1 convolution to classes.

    Raises:
        ValueError: an unknown name or ``spatial_dims``, or ``feature_channels`` for another student than ``unet``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown segmentation student {name!r}; use one of {list_segmentation_students()} or pass an nn.Module "
            "returning (B, F, *spatial) feature maps with feature_channels=F."
        )
    if "feature_channels" in kwargs and name != "unet":
        raise ValueError(
            f"feature_channels applies to 'unet' only; {name!r} sets its last decoder width itself "
            "(BasicUNet: features[-1], SegResNet: init_filters)."
        )
    return _BUILDERS[name](spatial_dims, in_channels, num_classes, **kwargs)


class SegmentationStudent(nn.Module):
    """Segmentation student S plus the shared 1x1-conv head h: the model dense RD deploys.

    ``forward_features`` returns the last decoder feature map f_S (B, F, *spatial) that dense RD aligns with the
    reprogrammed teacher map, ``classify`` applies the head shared by both branches, and ``forward(x) =
    classify(forward_features(x))`` is the plain student with its head: what inference, sliding-window inference
    and TorchScript export use.

    For Deep RD the encoder levels are the stages (:mod:`monai_rd.networks.segmentation_stages`; nothing is added
    to the model): :meth:`forward_stages` returns the N encoder maps and :meth:`forward_from` runs the rest of the
    network from the maps of levels 0..i, so ``classify(forward_from(i, maps))`` are the hybrid logits.

    Args:
        backbone: a name for :func:`create_segmentation_backbone` or an ``nn.Module`` returning feature maps
            (B, feature_channels, *spatial).
        num_classes: classes of the head (background included).
        spatial_dims: 2 or 3.
        in_channels: input channels (named backbones).
        feature_channels: channels of a module backbone's feature map (found from the name otherwise).
        kwargs: passed to the MONAI constructor of a named backbone.

    Raises:
        ValueError: an unknown name, or a module backbone without ``feature_channels``.

    Example:
        >>> net = SegmentationStudent("unet", num_classes=4, spatial_dims=3, channels=(8, 16, 32), strides=(2, 2))
        >>> logits = net(torch.rand(1, 1, 32, 32, 32))  # (1, 4, 32, 32, 32)
    """

    # TorchScript compiles properties too; the Deep RD stage access is Python only (never part of the export)
    __jit_unused_properties__ = ["stage_names"]

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int,
        spatial_dims: int = 3,
        in_channels: int = 1,
        feature_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            self.backbone_name = backbone
            if feature_channels is not None:
                kwargs["feature_channels"] = feature_channels
            backbone, head, feature_channels = create_segmentation_backbone(
                backbone, spatial_dims, in_channels, num_classes, **kwargs
            )
        else:
            self.backbone_name = type(backbone).__name__
            if feature_channels is None:
                raise ValueError("pass feature_channels for a module backbone (the channels of its feature map).")
            head = Conv[Conv.CONV, spatial_dims](feature_channels, num_classes, kernel_size=1)
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.feature_channels = int(feature_channels)  # type: ignore[arg-type]
        self.spatial_dims = int(spatial_dims)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder feature map f_S, (B, feature_channels, *spatial)."""
        return self.backbone(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Shared head h on feature maps of either branch: (B, F, *spatial) -> (B, num_classes, *spatial)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images (B, in_channels, *spatial).

        Returns:
            Logits (B, num_classes, *spatial).
        """
        return self.classify(self.forward_features(x))

    # ----------------------------------------------------------------------------------------- stages (Deep RD)
    def _stages(self) -> SegmentationStages:
        # found from the modules on each call: nothing is stored on the model (copies, DDP, TorchScript unchanged)
        return segmentation_stages(self.backbone)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the N encoder levels, shallow to deep: the path of the module giving each level's map (UNet:
        each block's down layer, then the bottom layer; BasicUNet: ``conv_0``, ``down_1 .. down_4``; SegResNet:
        ``down_layers.<k>``).

        Raises:
            ValueError: a backbone without known encoder levels (e.g. a custom module).
        """
        return self._stages().names

    def stage_modules(self, i: int) -> list[nn.Module]:
        """The encoder modules of level ``i`` (e.g. to freeze levels <= i).

        Args:
            i: 0-based level index.
        """
        stages = self._stages()
        return stages.modules(stage_index(i, len(stages.names)))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The N encoder maps, shallow to deep.

        Args:
            x: images (B, in_channels, *spatial).

        Returns:
            N maps (B, C_i, *spatial_i): UNet from /stride_0 (its first level is already downsampled) to the bottom,
            BasicUNet and SegResNet from full resolution to the deepest level.
        """
        return self._stages().encode(x)

    def forward_from(self, i: int, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the rest of the network from the encoder maps of levels 0..i to the last decoder map.

        The skip connections of levels <= i take ``maps[0..i]`` (in Deep RD the reprogrammed teacher maps of those
        levels); the deeper levels are computed from ``maps[i]`` by the student's own encoder (later entries of
        ``maps``, if given, are not used); then the whole decoder runs. So ``forward_from(i, forward_stages(x))``
        equals ``forward_features(x)``, a loss on the result gives no gradient to the encoder of levels <= i, and
        the maps are not changed in place.

        Args:
            i: 0-based level index in ``0 .. N - 1``.
            maps: at least i + 1 maps, ``maps[k]`` of level k's shape.

        Returns:
            The last decoder map (B, feature_channels, *spatial), the input of :meth:`classify`.

        Raises:
            IndexError: ``i`` is not a level index.
            ValueError: fewer than i + 1 maps.
        """
        stages = self._stages()
        i = stage_index(i, len(stages.names))
        if isinstance(maps, torch.Tensor) or len(maps) < i + 1:
            got = "a tensor" if isinstance(maps, torch.Tensor) else f"{len(maps)} maps"
            raise ValueError(f"forward_from({i}, maps) needs a list of the maps of levels 0..{i}; got {got}.")
        return stages.decode_from(i, maps)

    def stage_shapes(self, spatial_size: Sequence[int]) -> list[tuple[int, ...]]:
        """(C_i, *spatial_i) of each encoder map for inputs of ``spatial_size`` (one dry run in eval mode without
        grad: normalisation statistics are not touched), e.g. to build the projectors.

        Args:
            spatial_size: input size, e.g. (96, 96, 96).

        Returns:
            One shape per level.
        """
        return dry_run_stage_shapes(self, spatial_size)
