"""LVM-Med encoders (Nguyen et al., NeurIPS 2023; github.com/duyhominhnguyen/LVM-Med, MIT).

- ResNet-50: ``lvmmed_resnet.torch``, a torchvision ResNet-50 ``state_dict`` (keys ``conv1.weight``, ``layer1.0...``;
  the authors load it into ``torchvision.models.resnet50``). ImageNet mean/std at 224 px; RD uses layer 4 (2048).
- ViT-B: ``lvmmed_vit.pth``, the Segment-Anything ViT-B image encoder (patch 16, 1024 px, windowed attention with
  global blocks 2, 5, 8, 11, decomposed relative positions, neck to 256) with bare SAM keys (``patch_embed.proj``,
  ``pos_embed``, ``blocks.<i>.attn.rel_pos_h``, ``blocks.<i>.mlp.lin1``, ``neck.*``); full SAM checkpoints with an
  ``image_encoder.`` prefix are accepted too. SAM's pixel mean/std are the ImageNet ones. RD uses the last block's
  768-channel map (64x64 at 1024 px), before the neck.

Both files are distributed through the Google Drive links of the LVM-Med README, so they must be placed locally.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps, vit_block_stages, vit_block_taps
from monai_rd.networks.teachers.checkpoint import read_state_dict, resolve_weights
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_STAGES",
    "SamViTTrunk",
    "lvm_med_resnet50_teacher",
    "lvm_med_vit_b_teacher",
    "resnet_trunk",
    "resnet_trunk_taps",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_README = "the Google Drive links in https://github.com/duyhominhnguyen/LVM-Med#pretrained-models"
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
# torchvision ResNet child -> its index in resnet_trunk's nn.Sequential
_RESNET_TRUNK_INDEX = {
    "conv1": "0", "bn1": "1", "relu": "2", "maxpool": "3", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"
}


def resnet_trunk(model: nn.Module) -> nn.Sequential:
    """conv1 ... layer4 of a torchvision ResNet (no pooling/head).

    Args:
        model: torchvision ResNet.

    Returns:
        Module mapping (B, 3, H, W) to the layer-4 map (B, C, H / 32, W / 32).
    """
    return nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
    )


def resnet_trunk_taps() -> GraphTaps:
    """Deep RD stage taps of :func:`resnet_trunk`: ``layer1 .. layer4`` (strides 4 to 32); any submodule can be named
    by its torchvision path (e.g. ``layer3.5``)."""
    return GraphTaps(RESNET_STAGES, path_map=_RESNET_TRUNK_INDEX)


@register_teacher(
    "lvm-med-resnet50",
    architecture="torchvision ResNet-50",
    source=f"lvmmed_resnet.torch from {_README}",
    licence="MIT",
    input_size=(224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_layer="layer4",
    out_channels=2048,
    weights_file="lvmmed_resnet.torch",
    checkpoint_layout="torchvision ResNet-50 state_dict (conv1.*, bn1.*, layer1-4.*; fc.* ignored if present)",
    stages=RESNET_STAGES,
)
def lvm_med_resnet50_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
) -> FrozenTeacher:
    """LVM-Med ResNet-50 as a frozen teacher returning its layer-4 map (B, 2048, 7, 7) at 224 px.

    Args:
        weights: local ``lvmmed_resnet.torch``; None looks for ``<torch hub>/checkpoints/lvm_med/lvmmed_resnet.torch``.
        sha256: optional expected SHA-256.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 224 px input.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: the file is not available locally.
        CheckpointKeyError: the keys do not match.
    """
    import torchvision

    path = resolve_weights(
        weights, filename="lvm_med/lvmmed_resnet.torch", name="lvm-med-resnet50", manual=_README, sha256=sha256
    )
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()  # LVM-Med releases the encoder without a classifier; a stray fc.* is ignored
    return load_teacher(
        "lvm-med-resnet50", model, path, read_state_dict(path, strip="module."), trunk=resnet_trunk, ignore=("fc.*",),
        input_size=input_size, autocast_dtype=autocast_dtype, stage_taps=resnet_trunk_taps(),
    )


class SamViTTrunk(nn.Module):
    """SAM image encoder (timm ``VisionTransformerSAM``) returning the last block's map, before the neck.

    Args:
        vit: the timm SAM ViT (its neck stays loaded but unused).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images, H and W multiples of 16.

        Returns:
            (B, 768, H / 16, W / 16) map of the last transformer block.
        """
        from timm.layers import resample_abs_pos_embed_nhwc

        v = self.vit
        x = v.patch_embed(x)
        if v.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(v.pos_embed, x.shape[1:3])
        x = v.norm_pre(x)
        x = v.blocks(x)
        return x.permute(0, 3, 1, 2)


def sam_encoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM-style ViT image-encoder checkpoint into timm's key names.

    Args:
        path: ``lvmmed_vit.pth`` (bare encoder keys) or a full SAM checkpoint (``image_encoder.*``).

    Returns:
        State dict with timm names (``mlp.lin1/2`` -> ``mlp.fc1/2``).
    """
    state = read_state_dict(path, strip="module.", select="image_encoder.")
    return {k.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2."): v for k, v in state.items()}


@register_teacher(
    "lvm-med-vit-b",
    architecture="SAM ViT-B/16 image encoder (12 blocks, window 14, global 2-5-8-11, rel-pos, neck 256)",
    source=f"lvmmed_vit.pth from {_README}",
    licence="MIT",
    input_size=(1024, 1024),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_layer="blocks.11 output (before neck)",
    out_channels=768,
    weights_file="lvmmed_vit.pth",
    checkpoint_layout=(
        "SAM image-encoder keys (patch_embed.*, pos_embed, blocks.<i>.*, neck.*); image_encoder.* accepted"
    ),
    stages=vit_block_stages(12),
)
def lvm_med_vit_b_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
    depth: int = 12,
) -> FrozenTeacher:
    """LVM-Med SAM ViT-B encoder as a frozen teacher returning (B, 768, 64, 64) at its native 1024 px.

    Args:
        weights: local ``lvmmed_vit.pth``; None looks for ``<torch hub>/checkpoints/lvm_med/lvmmed_vit.pth``.
        sha256: optional expected SHA-256.
        autocast_dtype: optional autocast dtype (bfloat16 recommended on GPU at 1024 px).
        input_size: override of the 1024 px input (multiple of 16; the absolute and relative position embeddings
            are interpolated).
        depth: number of blocks (12 for the published model; smaller only for tests, the checkpoint must match).

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: the file is not available locally.
        CheckpointKeyError: the keys do not match.
    """
    import timm

    path = resolve_weights(
        weights, filename="lvm_med/lvmmed_vit.pth", name="lvm-med-vit-b", manual=_README, sha256=sha256
    )
    size = tuple(input_size) if input_size is not None else (1024, 1024)
    vit = timm.create_model(
        "samvit_base_patch16", pretrained=False, num_classes=0, depth=depth, img_size=1024
    )
    if size != (1024, 1024):
        vit.patch_embed.strict_img_size = False
    return load_teacher(
        "lvm-med-vit-b", vit, path, sam_encoder_state(path), trunk=SamViTTrunk, input_size=size,
        autocast_dtype=autocast_dtype,
        # block outputs before the neck (SAM's "norm" is the neck), so the last block's tap is the feature map
        stage_taps=vit_block_taps(depth, norm=False, attr="vit"),
    )
