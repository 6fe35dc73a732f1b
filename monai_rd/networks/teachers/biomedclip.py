"""BiomedCLIP vision trunk (Zhang et al. 2023; microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, MIT).

Published for open_clip as ``open_clip_pytorch_model.bin`` plus ``open_clip_config.json`` on the Hugging Face hub.
The image tower is an open_clip ``TimmModel`` whose trunk is timm ``vit_base_patch16_224`` (no classifier, token
pooling; keys ``visual.trunk.*``) followed by a linear projection to 512 (``visual.head.proj.weight``); the text
tower is PubMedBERT (``text.*``). The teacher builds only the trunk with timm (so no network access is needed for the
text tower's config) and loads the ``visual.trunk.*`` keys strictly; the projection and text tower are not used.
Images are normalised with the OpenAI CLIP mean/std (``preprocess_cfg`` of ``open_clip_config.json``, read when
the file is next to the weights). RD uses the final-norm patch tokens: a (B, 768, 14, 14) map at 224 px.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import vit_block_stages, vit_block_taps
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError, read_state_dict, resolve_weights, select_prefix
from monai_rd.networks.teachers.pmc_clip import CLIP_MEAN, CLIP_STD
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = ["BIOMEDCLIP_HF_REPO", "biomedclip_teacher"]

BIOMEDCLIP_HF_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@register_teacher(
    "biomedclip-vit-b16",
    architecture="timm vit_base_patch16_224 (open_clip TimmModel trunk, 12 blocks, 768, token pool)",
    source=f"https://huggingface.co/{BIOMEDCLIP_HF_REPO} (open_clip_pytorch_model.bin)",
    licence="MIT",
    input_size=(224, 224),
    mean=CLIP_MEAN,
    std=CLIP_STD,
    feature_layer="visual.trunk.norm (patch tokens)",
    out_channels=768,
    weights_file="open_clip_pytorch_model.bin",
    checkpoint_layout="visual.trunk.<timm ViT key>, visual.head.proj.weight, text.* (open_clip CustomTextCLIP)",
    stages=vit_block_stages(12),
)
def biomedclip_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
    depth: int = 12,
) -> FrozenTeacher:
    """BiomedCLIP's ViT-B/16 image trunk as a frozen teacher returning (B, 768, 14, 14) at 224 px.

    Args:
        weights: ``open_clip_pytorch_model.bin`` (or ``.safetensors``), or the folder holding it and
            ``open_clip_config.json``; None uses the Hugging Face cache / download (``hf_hub_download``) or a file
            placed at ``<torch hub>/checkpoints/biomedclip/open_clip_pytorch_model.bin``.
        sha256: optional expected SHA-256 of the weights file.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 224 px input (position embeddings are interpolated).
        depth: transformer blocks (12 published; smaller only for tests, the checkpoint must match).

    Returns:
        The frozen teacher; its stage taps (Deep RD) are the final-norm patch tokens of blocks 2, 5, 8 and 11
        (evenly spaced over ``depth``), as (B, 768, 14, 14) maps at 224 px.

    Raises:
        WeightsUnavailableError: no local file and no download possible.
        CheckpointKeyError: the ``visual.trunk.*`` keys do not match, or unexpected non-text keys are present.
    """
    import timm

    if weights is not None and Path(weights).is_dir():
        folder = Path(weights)
        candidates = [folder / "open_clip_pytorch_model.bin", folder / "open_clip_model.safetensors"]
        weights = next((c for c in candidates if c.is_file()), candidates[0])
    path = resolve_weights(
        weights, filename="biomedclip/open_clip_pytorch_model.bin", name="biomedclip-vit-b16",
        hf_repo=BIOMEDCLIP_HF_REPO, hf_filename="open_clip_pytorch_model.bin", sha256=sha256,
    )
    mean, std = CLIP_MEAN, CLIP_STD
    config = path.parent / "open_clip_config.json"
    if config.is_file():
        pre = json.loads(config.read_text()).get("preprocess_cfg", {})
        mean, std = tuple(pre.get("mean", mean)), tuple(pre.get("std", std))
    state = read_state_dict(path)
    unexpected_towers = [k for k in state if not k.startswith(("visual.trunk.", "visual.head.", "text.", "logit_"))]
    trunk_state = select_prefix(state, "visual.trunk.")
    # keys outside the image trunk are only allowed where BiomedCLIP has them (text tower, projection, logit scale)
    trunk_state.update({f"<not in trunk> {k}": v for k, v in state.items() if k in unexpected_towers})
    if not any(not k.startswith("<not in trunk>") for k in trunk_state):
        raise CheckpointKeyError(f"{path} has no 'visual.trunk.*' keys: it is not an open_clip BiomedCLIP checkpoint.")
    size = tuple(input_size) if input_size is not None else (224, 224)
    trunk = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=0, depth=depth, img_size=224, dynamic_img_size=True
    )
    return load_teacher(
        "biomedclip-vit-b16", trunk, path, trunk_state, feature_fn="forward_features",
        num_prefix_tokens=trunk.num_prefix_tokens, input_size=size, mean=mean, std=std, autocast_dtype=autocast_dtype,
        # final norm on every tap, as on the feature map: the last block's tap is the feature map
        stage_taps=vit_block_taps(depth, norm=True),
    )
