"""A segmentation student's encoder levels as Deep Reprogramming Distillation (DRD) stages.

The stages of an encoder-decoder are its encoder levels, shallow to deep. ``decode_from(i, maps)`` runs the rest of
the network to the last decoder map: the skip connections of levels <= i come from ``maps`` (in DRD the
reprogrammed teacher maps of levels 0..i), the deeper levels are computed from ``maps[i]`` by the student's own
encoder, then the whole decoder runs. With the student's own maps it computes exactly what the network computes.

Everything is found by walking the network's existing modules (nothing is created or re-registered, so the
``state_dict`` and the random number stream are those of the plain network). Supported: MONAI ``UNet`` (built
recursively of ``nn.Sequential(down, SkipConnection(inner), up)`` blocks, read level by level), ``BasicUNet`` and
``SegResNet``, as built by :func:`monai_rd.networks.create_segmentation_backbone` or passed as modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["SegmentationStages", "segmentation_stages"]


class SegmentationStages:
    """Base class: the encoder levels of one segmentation network.

    Args:
        backbone: the network (the student's ``backbone``).
    """

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    @property
    def names(self) -> tuple[str, ...]:
        """Each level's name: the path, in the backbone, of the module whose output is the level's map."""
        raise NotImplementedError

    def modules(self, i: int) -> list[nn.Module]:
        """The encoder modules of level ``i`` (those :meth:`decode_from` skips for levels <= i)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The N encoder maps, shallow to deep."""
        raise NotImplementedError

    def decode_from(self, i: int, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last decoder map from the encoder maps of levels 0..i (the deeper ones computed from ``maps[i]``)."""
        raise NotImplementedError


def _merge(skip: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What a MONAI ``SkipConnection`` returns for its input ``x`` and its submodule's output ``y``."""
    if skip.mode == "cat":
        return torch.cat([x, y], dim=skip.dim)
    if skip.mode == "add":
        return torch.add(x, y)
    if skip.mode == "mul":
        return torch.mul(x, y)
    raise NotImplementedError(f"unsupported SkipConnection mode {skip.mode!r}.")


class _UNetStages(SegmentationStages):
    """MONAI ``UNet``: level k < N - 1 is the output of block k's ``down`` layer, level N - 1 the bottom layer's.

    Block k is ``nn.Sequential(down_k, SkipConnection(inner_k), up_k)``, where ``inner_k`` is block k + 1, or the
    bottom layer for the last block; ``up_k`` takes ``cat(down_k output, inner_k output)``.
    """

    def __init__(self, backbone: nn.Module, unet: nn.Module, unet_path: str, post: nn.Module | None) -> None:
        super().__init__(backbone)
        self.post = post
        self.blocks: list[tuple[nn.Module, nn.Module, nn.Module]] = []  # (down, skip, up) per block
        self._names: list[str] = []
        block, path = unet.model, f"{unet_path}model"
        for _ in range(len(unet.channels) - 1):
            down, skip, up = block[0], block[1], block[2]
            self.blocks.append((down, skip, up))
            self._names.append(f"{path}.0")
            block, path = skip.submodule, f"{path}.1.submodule"
        self.bottom = block
        self._names.append(path)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def modules(self, i: int) -> list[nn.Module]:
        return [self.blocks[i][0] if i < len(self.blocks) else self.bottom]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for down, _, _ in self.blocks:
            x = down(x)
            maps.append(x)
        maps.append(self.bottom(x))
        return maps

    def decode_from(self, i: int, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        last = len(self.blocks) - 1  # the deepest block
        j = min(i, last)
        # the inner output of block j: the given bottom map, or the student's own deeper levels run on maps[j]
        inner = maps[last + 1] if i > last else self.blocks[j][1].submodule(maps[j])
        for k in range(j, -1, -1):
            _, skip, up = self.blocks[k]
            inner = up(_merge(skip, maps[k], inner))
        return self.post(inner) if self.post is not None else inner


class _BasicUNetStages(SegmentationStages):
    """MONAI ``BasicUNet``: levels ``conv_0``, ``down_1 .. down_4`` (full resolution to /16)."""

    _LEVELS = ("conv_0", "down_1", "down_2", "down_3", "down_4")

    @property
    def names(self) -> tuple[str, ...]:
        return self._LEVELS

    def modules(self, i: int) -> list[nn.Module]:
        return [self.backbone.get_submodule(self._LEVELS[i])]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for name in self._LEVELS:
            x = self.backbone.get_submodule(name)(x)
            maps.append(x)
        return maps

    def decode_from(self, i: int, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        xs = list(maps[: i + 1])
        for name in self._LEVELS[i + 1 :]:
            xs.append(self.backbone.get_submodule(name)(xs[-1]))
        net = self.backbone
        u = net.upcat_4(xs[4], xs[3])
        u = net.upcat_3(u, xs[2])
        u = net.upcat_2(u, xs[1])
        u = net.upcat_1(u, xs[0])
        return net.final_conv(u)


class _SegResNetStages(SegmentationStages):
    """MONAI ``SegResNet``: level k is the output of ``down_layers[k]`` (level 0 also runs ``convInit`` and the
    optional dropout); the decoder adds level k's map after each upsampling, then ``conv_final``."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"down_layers.{k}" for k in range(len(self.backbone.down_layers)))

    def modules(self, i: int) -> list[nn.Module]:
        net = self.backbone
        first = ([net.convInit] + ([net.dropout] if net.dropout_prob is not None else [])) if i == 0 else []
        return first + [net.down_layers[i]]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.backbone
        x = net.convInit(x)
        if net.dropout_prob is not None:
            x = net.dropout(x)
        maps = []
        for down in net.down_layers:
            x = down(x)
            maps.append(x)
        return maps

    def decode_from(self, i: int, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        net = self.backbone
        xs = list(maps[: i + 1])
        for down in list(net.down_layers)[i + 1 :]:
            xs.append(down(xs[-1]))
        x = xs[-1]
        for k, (up, upl) in enumerate(zip(net.up_samples, net.up_layers)):
            x = upl(up(x) + xs[len(xs) - 2 - k])
        return net.conv_final(x) if net.use_conv_final else x


def segmentation_stages(backbone: nn.Module) -> SegmentationStages:
    """The encoder levels of a segmentation student's backbone.

    Args:
        backbone: ``SegmentationStudent.backbone``: ``nn.Sequential(UNet, ADN)`` (the ``unet`` student), a MONAI
            ``UNet``, ``BasicUNet`` or ``SegResNet``.

    Returns:
        Its :class:`SegmentationStages`.

    Raises:
        ValueError: another network.
    """
    from monai.networks.nets import BasicUNet, SegResNet, UNet

    if isinstance(backbone, nn.Sequential) and len(backbone) == 2 and isinstance(backbone[0], UNet):
        return _UNetStages(backbone, backbone[0], "0.", backbone[1])
    if isinstance(backbone, UNet):
        return _UNetStages(backbone, backbone, "", None)
    if isinstance(backbone, BasicUNet):
        return _BasicUNetStages(backbone)
    if isinstance(backbone, SegResNet):
        return _SegResNetStages(backbone)
    raise ValueError(
        f"Deep RD cannot cut a {type(backbone).__name__} segmentation student into encoder levels; supported: MONAI "
        "UNet, BasicUNet and SegResNet."
    )
