"""RAD-DINO (Pérez-García et al., Nature Machine Intelligence 2025; huggingface.co/microsoft/rad-dino, MIT).

A DINOv2 ViT-B/14 continually trained on chest X-rays, published for ``transformers`` as a ``Dinov2Model``
(``config.json``, ``model.safetensors`` with keys ``embeddings.cls_token``, ``embeddings.mask_token``,
``embeddings.position_embeddings``, ``embeddings.patch_embeddings.projection.*``, ``encoder.layer.<i>.*`` with
layer scale, ``layernorm.*``) and ``preprocessor_config.json`` (518 px, its own grey-level mean/std, which the teacher
reads when the file is available). RD uses the final-norm patch tokens of ``last_hidden_state``: (B, 768, 37, 37).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import HiddenStateTaps
from monai_rd.networks.stages import evenly_spaced
from monai_rd.networks.teachers.checkpoint import read_state_dict, resolve_weights
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = ["RAD_DINO_CONFIG", "RAD_DINO_HF_REPO", "HFVisionTrunk", "dinov2_layer_stages", "rad_dino_teacher"]

RAD_DINO_HF_REPO = "microsoft/rad-dino"
# preprocessor_config.json of microsoft/rad-dino (used when the file itself is not at hand)
RAD_DINO_MEAN = (0.5307, 0.5307, 0.5307)
RAD_DINO_STD = (0.2583, 0.2583, 0.2583)
# config.json of microsoft/rad-dino (DINOv2 ViT-B/14)
RAD_DINO_CONFIG = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14, image_size=518,
    layerscale_value=1.0, layer_norm_eps=1e-6, use_swiglu_ffn=False, qkv_bias=True, hidden_act="gelu",
)


# published (transformers 4.x) Dinov2 names -> names of transformers >= 5 (identity when the model uses old names)
_DINOV2_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def dinov2_key_mapper(model: nn.Module):
    """Key mapping from the published Dinov2 layout to the installed ``transformers``' module names.

    Args:
        model: the ``Dinov2Model`` to load into.

    Returns:
        A function mapping a checkpoint key to the model's key.
    """
    new_names = any(".attention.q_proj." in k for k in model.state_dict())

    def rename(key: str) -> str:
        if new_names:
            for old, new in _DINOV2_RENAMES:
                key = key.replace(old, new)
        return key

    return rename


class HFVisionTrunk(nn.Module):
    """A ``transformers`` vision model returning ``last_hidden_state`` (B, 1 + N, C) for :class:`FrozenTeacher`.

    Args:
        model: e.g. ``Dinov2Model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            (B, 1 + N, C) tokens after the final layer norm.
        """
        return self.model(pixel_values=x).last_hidden_state


def dinov2_layer_stages(num_layers: int) -> tuple[str, ...]:
    """Default Deep RD stage taps of a Dinov2Model: ``encoder.layer.<i>`` at 4 evenly spaced depths (2, 5, 8, 11).

    Args:
        num_layers: ``num_hidden_layers``.
    """
    return tuple(f"encoder.layer.{i}" for i in evenly_spaced(num_layers))


def _hub_file(name: str) -> Path | None:
    """A small published config file from the cache/hub, or None (the built-in copies of its values are used)."""
    try:
        return resolve_weights(
            None, filename=f"rad_dino/{name}", name="rad-dino", hf_repo=RAD_DINO_HF_REPO, hf_filename=name
        )
    except FileNotFoundError:
        return None


@register_teacher(
    "rad-dino",
    architecture="DINOv2 ViT-B/14 (transformers Dinov2Model, 12 layers, 768, layer scale, 518 px)",
    source=f"https://huggingface.co/{RAD_DINO_HF_REPO} (model.safetensors)",
    licence="MIT (earlier revisions: MSRLA)",
    input_size=(518, 518),
    mean=RAD_DINO_MEAN,
    std=RAD_DINO_STD,
    feature_layer="last_hidden_state patch tokens (after layernorm)",
    out_channels=768,
    weights_file="model.safetensors",
    checkpoint_layout="transformers Dinov2Model keys (embeddings.*, encoder.layer.<i>.*, layernorm.*)",
    stages=dinov2_layer_stages(12),
)
def rad_dino_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: tuple[int, int] | None = None,
    **config_overrides,
) -> FrozenTeacher:
    """RAD-DINO as a frozen teacher returning (B, 768, 37, 37) at its native 518 px.

    Args:
        weights: ``model.safetensors``, or a folder (a Hugging Face snapshot) holding it with ``config.json`` and
            ``preprocessor_config.json``; None uses the Hugging Face cache / download or files placed under
            ``<torch hub>/checkpoints/rad_dino/``.
        sha256: optional expected SHA-256 of ``model.safetensors``.
        autocast_dtype: optional autocast dtype.
        input_size: override of the 518 px input (multiple of 14; position embeddings are interpolated).
        config_overrides: ``Dinov2Config`` fields overriding the published config (tests only, e.g.
            ``num_hidden_layers=2``; the checkpoint must match).

    Returns:
        The frozen teacher; its stage taps (Deep RD) are layers 2, 5, 8 and 11 (evenly spaced over the layers) from
        ``output_hidden_states``, layer-normalised as ``last_hidden_state``: (B, 768, 37, 37) maps at 518 px.

    Raises:
        ImportError: ``transformers`` is not installed.
        WeightsUnavailableError: no local file and no download possible.
        CheckpointKeyError: the keys do not match.
    """
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError as e:
        raise ImportError("the 'rad-dino' teacher needs `pip install transformers`.") from e

    config_file = preproc_file = None
    if weights is not None and Path(weights).is_dir():
        folder = Path(weights)
        weights = folder / "model.safetensors"
        config_file, preproc_file = folder / "config.json", folder / "preprocessor_config.json"
    path = resolve_weights(
        weights, filename="rad_dino/model.safetensors", name="rad-dino", hf_repo=RAD_DINO_HF_REPO,
        hf_filename="model.safetensors", sha256=sha256,
    )
    if weights is None:  # fetched/cached from the hub: take the published config files from the same place
        config_file, preproc_file = _hub_file("config.json"), _hub_file("preprocessor_config.json")
    elif config_file is None:
        config_file, preproc_file = path.parent / "config.json", path.parent / "preprocessor_config.json"

    cfg = dict(RAD_DINO_CONFIG)
    if config_file is not None and config_file.is_file():
        published = json.loads(config_file.read_text())
        cfg.update({k: published[k] for k in RAD_DINO_CONFIG if k in published})
    cfg.update(config_overrides)
    mean, std = RAD_DINO_MEAN, RAD_DINO_STD
    size = tuple(input_size) if input_size is not None else (cfg["image_size"],) * 2
    if preproc_file is not None and preproc_file.is_file():
        pre = json.loads(preproc_file.read_text())
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        crop = pre.get("crop_size")
        if input_size is None and isinstance(crop, dict) and "height" in crop:
            size = (crop["height"], crop["width"])

    model = Dinov2Model(Dinov2Config(**cfg))
    layers = int(cfg["num_hidden_layers"])
    taps = HiddenStateTaps(
        dinov2_layer_stages(layers), {f"encoder.layer.{i}": i for i in range(layers)}, attr="model",
        norm="layernorm", num_prefix_tokens=1, patch_size=int(cfg["patch_size"]),
    )
    return load_teacher(
        "rad-dino", model, path, read_state_dict(path, strip="dinov2."), trunk=HFVisionTrunk,
        rename=dinov2_key_mapper(model), num_prefix_tokens=1, input_size=size, mean=mean, std=std,
        autocast_dtype=autocast_dtype, stage_taps=taps,
    )
