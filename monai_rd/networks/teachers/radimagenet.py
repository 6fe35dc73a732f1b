"""RadImageNet ResNet-50 and DenseNet-121 (Mei et al., Radiology: AI 2022; github.com/BMEII-AI/RadImageNet, MIT).

The authors release Keras ``*_notop.h5`` models and PyTorch checkpoints (``ResNet50.pt``, ``DenseNet121.pt``) on
Google Drive (link in the official README; no direct download URL, so the file must be placed locally). The PyTorch
checkpoints are the ``state_dict`` of the ``Backbone`` module of the official PyTorch example: a torchvision model's
children wrapped as ``self.backbone = nn.Sequential(*children[:9])`` for ResNet-50 (keys ``backbone.0.weight`` =
conv1, ``backbone.1.*`` = bn1, ``backbone.4..7.*`` = layer1..4) and ``nn.Sequential(densenet.features)`` for
DenseNet-121 (keys ``backbone.0.<features key>``). Plain torchvision-layout state dicts (``conv1.weight``,
``features.conv0.weight``) are accepted too; a classifier head (``fc.*``/``classifier.*``) is ignored. Keras ``.h5``
files are not read (convert them first). The official example normalises with ``(x - 127.5) * 2 / 255``, i.e.
mean 0.5, std 0.5 on [0, 1] intensities, at 224 px.
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps
from monai_rd.networks.teachers.checkpoint import read_state_dict, resolve_weights
from monai_rd.networks.teachers.lvm_med import RESNET_STAGES, resnet_trunk_taps
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = [
    "DENSENET_STAGES",
    "RADIMAGENET_MEAN",
    "RADIMAGENET_STD",
    "radimagenet_densenet121_teacher",
    "radimagenet_resnet50_teacher",
]

RADIMAGENET_MEAN = (0.5, 0.5, 0.5)
RADIMAGENET_STD = (0.5, 0.5, 0.5)
_DRIVE = "the RadImageNet Google Drive linked from https://github.com/BMEII-AI/RadImageNet"

# torchvision ResNet child index -> name in nn.Sequential(*children[:9])
_RESNET_CHILDREN = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
# Deep RD stage taps of the DenseNet's `features`: the last module at strides 4, 8, 16 and 32
DENSENET_STAGES = ("denseblock1", "denseblock2", "denseblock3", "norm5")


class RadImageNetBackbone(nn.Module):
    """The ``Backbone`` module of the official RadImageNet PyTorch example (its state_dict is the checkpoint).

    Args:
        arch: ``"resnet50"`` or ``"densenet121"``.
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        import torchvision

        if arch == "resnet50":
            children = list(torchvision.models.resnet50(weights=None).children())[:9]
        elif arch == "densenet121":
            children = list(torchvision.models.densenet121(weights=None).children())[:-1]
        else:
            raise ValueError(f"RadImageNet arch must be 'resnet50' or 'densenet121', got {arch!r}.")
        self.arch = arch
        self.backbone = nn.Sequential(*children)

    def feature_trunk(self) -> nn.Module:
        """The part of the backbone RD distils from.

        Returns:
            ResNet-50: conv1..layer4 (drops the global pool), output (B, 2048, 7, 7) at 224 px;
            DenseNet-121: ``features`` (through ``norm5``), output (B, 1024, 7, 7) at 224 px.
        """
        if self.arch == "resnet50":
            return nn.Sequential(*list(self.backbone.children())[:8])
        return self.backbone[0]


# pre-0.3 torchvision DenseNet names ("denselayer1.norm.1.weight") -> current names ("denselayer1.norm1.weight")
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _to_backbone_layout(key: str, arch: str) -> str:
    """Map a torchvision-layout key to the official ``backbone.<i>.`` layout (identity for official keys)."""
    match = _OLD_DENSENET.match(key)
    if match:
        key = match.group(1) + match.group(2)
    if key.startswith("backbone."):
        return key
    head, _, rest = key.partition(".")
    if arch == "resnet50" and head in _RESNET_CHILDREN:
        return f"backbone.{_RESNET_CHILDREN[head]}.{rest}"
    if arch == "densenet121" and head == "features":
        return f"backbone.0.{rest}"
    return key


def _build(arch: str, name: str, filename: str, weights, sha256, autocast_dtype, input_size) -> FrozenTeacher:
    path = resolve_weights(weights, filename=f"radimagenet/{filename}", name=name, manual=_DRIVE, sha256=sha256)
    # the ResNet trunk is conv1..layer4 in torchvision order, as resnet_trunk; the DenseNet trunk is `features`
    taps = resnet_trunk_taps() if arch == "resnet50" else GraphTaps(DENSENET_STAGES)
    return load_teacher(
        name, RadImageNetBackbone(arch), path, read_state_dict(path, strip="module."),
        trunk=RadImageNetBackbone.feature_trunk, rename=lambda k: _to_backbone_layout(k, arch),
        ignore=("fc.*", "classifier.*", "linear.*"), input_size=input_size, autocast_dtype=autocast_dtype,
        stage_taps=taps,
    )


@register_teacher(
    "radimagenet-resnet50",
    architecture="torchvision ResNet-50 (Bottleneck 3-4-6-3)",
    source=f"ResNet50.pt from {_DRIVE}",
    licence="MIT",
    input_size=(224, 224),
    mean=RADIMAGENET_MEAN,
    std=RADIMAGENET_STD,
    feature_layer="layer4 (backbone.7)",
    out_channels=2048,
    weights_file="ResNet50.pt",
    checkpoint_layout="backbone.<i>.<torchvision key> (i: 0 conv1, 1 bn1, 4-7 layer1-4); torchvision keys accepted",
    stages=RESNET_STAGES,
)
def radimagenet_resnet50_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
) -> FrozenTeacher:
    """RadImageNet ResNet-50 as a frozen teacher returning its layer-4 map (B, 2048, 7, 7) at 224 px.

    Args:
        weights: local ``ResNet50.pt``; None looks for ``<torch hub>/checkpoints/radimagenet/ResNet50.pt``.
        sha256: optional expected SHA-256.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 224 px input.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: the file is not available locally (Google Drive cannot be fetched automatically).
        CheckpointKeyError: the keys do not match.
    """
    return _build("resnet50", "radimagenet-resnet50", "ResNet50.pt", weights, sha256, autocast_dtype, input_size)


@register_teacher(
    "radimagenet-densenet121",
    architecture="torchvision DenseNet-121 (growth 32, blocks 6-12-24-16)",
    source=f"DenseNet121.pt from {_DRIVE}",
    licence="MIT",
    input_size=(224, 224),
    mean=RADIMAGENET_MEAN,
    std=RADIMAGENET_STD,
    feature_layer="features (through norm5; backbone.0)",
    out_channels=1024,
    weights_file="DenseNet121.pt",
    checkpoint_layout="backbone.0.<torchvision features key>; torchvision keys (features.*) accepted",
    stages=DENSENET_STAGES,
)
def radimagenet_densenet121_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
) -> FrozenTeacher:
    """RadImageNet DenseNet-121 as a frozen teacher returning its ``features`` map (B, 1024, 7, 7) at 224 px.

    Args:
        weights: local ``DenseNet121.pt``; None looks for ``<torch hub>/checkpoints/radimagenet/DenseNet121.pt``.
        sha256: optional expected SHA-256.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 224 px input.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: the file is not available locally.
        CheckpointKeyError: the keys do not match.
    """
    return _build(
        "densenet121", "radimagenet-densenet121", "DenseNet121.pt", weights, sha256, autocast_dtype, input_size
    )
