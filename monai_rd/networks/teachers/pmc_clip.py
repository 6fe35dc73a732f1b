"""PMC-CLIP visual encoder: the OpenAI-CLIP style "ModifiedResNet" RN50 trained on PMC-OA.

Published by Lin et al. (MICCAI 2023, https://github.com/WeixiongLin/PMC-CLIP, MIT) as ``checkpoint.pt`` on the
Hugging Face repository ``axiong/PMC_CLIP``: a training checkpoint ``{"epoch", "state_dict", ...}`` whose
``state_dict`` holds the whole model under DistributedDataParallel names, the image tower being
``module.visual.*`` (config ``RN50_fusion4``: layers (3, 4, 6, 3), width 64, embed_dim 768, 224 px). The
tutorial's exported ``image_encoder_resnet50.pth`` (bare ``ModifiedResNet`` keys) is accepted too. Images are
normalised with the OpenAI CLIP mean/std. RD uses the layer-4 map (2048 channels, 7x7 at 224 px).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps
from monai_rd.networks.teachers.checkpoint import read_state_dict, resolve_weights
from monai_rd.networks.teachers.lvm_med import RESNET_STAGES
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = ["CLIP_MEAN", "CLIP_STD", "ModifiedResNet", "modified_resnet_taps", "pmc_clip_rn50_teacher"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _CLIPBottleneck(nn.Module):
    """CLIP bottleneck: stride-1 convolutions with an anti-aliasing average pool before strided paths."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            # published keys: downsample.0 (conv) and downsample.1 (bn); "-1" is the parameter-free pool
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(y + identity)


class _AttentionPool2d(nn.Module):
    """CLIP's QKV attention pooling (kept so the published keys load strictly; RD does not use its output)."""

    def __init__(self, spatial: int, dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[: x.shape[0], None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=c,
            num_heads=self.heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out[0]


class ModifiedResNet(nn.Module):
    """OpenAI-CLIP ResNet: 3-conv stem with average pool, anti-aliased strided blocks, attention pooling.

    Args:
        layers: blocks per stage, (3, 4, 6, 3) for RN50.
        output_dim: embedding size of the attention pool (768 for PMC-CLIP, 1024 for OpenAI RN50).
        heads: attention-pool heads (width * 32 // 64).
        image_size: pretraining resolution (sets the attention pool's positional embedding).
        width: stem width (64 for RN50).
    """

    def __init__(
        self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), output_dim: int = 768, heads: int = 32,
        image_size: int = 224, width: int = 64,
    ) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = _AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        mods = [_CLIPBottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * _CLIPBottleneck.expansion
        mods += [_CLIPBottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            Layer-4 map (B, 32 * width, H / 32, W / 32), i.e. (B, 2048, 7, 7) at 224 px for RN50.
        """
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            (B, output_dim) image embedding.
        """
        return self.attnpool(self.forward_features(x))


def modified_resnet_taps(attention_pool: type[nn.Module] = _AttentionPool2d, root: str = "") -> GraphTaps:
    """Deep RD stage taps of a CLIP ModifiedResNet: ``layer1 .. layer4`` (strides 4 to 32), traced with torch.fx
    with its attention pool as a leaf (the taps never reach it, so it is dropped from the graph and never run).

    Args:
        attention_pool: the attention pool's class (open_clip's ModifiedResNet has its own).
        root: path of the ModifiedResNet inside the teacher's model (e.g. ``"visual"``), "" for the model itself.
    """
    return GraphTaps(RESNET_STAGES, root=root, leaf_modules=[attention_pool])


def pmc_clip_visual_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the PMC-CLIP image tower from ``checkpoint.pt`` (``module.visual.*``) or a bare encoder export.

    Args:
        path: checkpoint file.

    Returns:
        ``ModifiedResNet`` state dict (prefix removed; text tower and fusion module left out).
    """
    return read_state_dict(path, select=("module.visual.", "visual."))


@register_teacher(
    "pmc-clip-rn50",
    architecture="CLIP ModifiedResNet-50 (layers 3-4-6-3, width 64, attention pool to 768)",
    source="https://huggingface.co/axiong/PMC_CLIP (checkpoint.pt), github.com/WeixiongLin/PMC-CLIP",
    licence="MIT",
    input_size=(224, 224),
    mean=CLIP_MEAN,
    std=CLIP_STD,
    feature_layer="visual.layer4",
    out_channels=2048,
    weights_file="checkpoint.pt",
    checkpoint_layout='{"state_dict": {"module.visual.<ModifiedResNet key>": ...}} (bare keys also accepted)',
    stages=RESNET_STAGES,
)
def pmc_clip_rn50_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
) -> FrozenTeacher:
    """PMC-CLIP's visual RN50 as a frozen teacher returning its layer-4 map (B, 2048, 7, 7) at 224 px.

    Args:
        weights: local ``checkpoint.pt`` (or bare encoder state dict); None looks in the torch hub cache
            (``pmc_clip/checkpoint.pt``) and downloads from ``axiong/PMC_CLIP`` if possible.
        sha256: optional expected SHA-256 of the file.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 224 px input.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: no local file and no download possible.
        CheckpointKeyError: the image tower's keys do not match.
    """
    path = resolve_weights(
        weights, filename="pmc_clip/checkpoint.pt", name="pmc-clip-rn50", hf_repo="axiong/PMC_CLIP",
        hf_filename="checkpoint.pt", sha256=sha256,
    )
    model = ModifiedResNet(layers=(3, 4, 6, 3), output_dim=768, heads=32, image_size=224, width=64)
    return load_teacher(
        "pmc-clip-rn50", model, path, pmc_clip_visual_state(path), feature_fn="forward_features",
        input_size=input_size, autocast_dtype=autocast_dtype, stage_taps=modified_resnet_taps(),
    )
