"""The 3D CT teacher ``swin-unetr-ssl``: SwinUNETR's self-supervised Swin Transformer encoder (Tang et al., CVPR 2022).

Weights: ``model_swinvit.pt``, released by MONAI with the self-supervised pre-training code of
Project-MONAI/research-contributions (``SwinUNETR/Pretrain``: rotation, contrastive and inpainting heads on about
5050 CT volumes) at :data:`SWIN_UNETR_SSL_URL`, the link of that README and of MONAI's BTCV tutorial. Layout, as read
by ``monai.networks.nets.SwinUNETR.load_from``: ``{"state_dict": {...}}`` with the encoder's keys behind a
DistributedDataParallel ``module.`` prefix: ``module.patch_embed.proj.*``,
``module.layers<i>.0.blocks.<b>.{norm1, attn.relative_position_bias_table, attn.relative_position_index, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}.*`` and ``module.layers<i>.0.downsample.{reduction, norm}.*``. MONAI's
``MLPBlock`` names ``mlp.fc1``/``mlp.fc2`` ``mlp.linear1``/``mlp.linear2``; everything else maps one to one onto
``SwinUNETR(in_channels=1, feature_size=48).swinViT`` (126 tensors), loaded strictly.

Preprocessing (``SwinUNETR/Pretrain/main.py`` defaults and ``utils/data_utils.py``): orientation RAS,
``ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True)``, random 96 x 96 x 96 crops (the
loader does not resample: its ``--space_x/y/z`` options are unused). The window and orientation are the data
transforms' job (the spec's ``intensity_range`` and ``axcodes``); the teacher resizes to its ``input_size`` itself.
Data windowed otherwise (e.g. a soft-tissue -175..250 HU) is mapped onto -1000..1000 with ``data_intensity_range``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.teachers.checkpoint import load_into, read_state_dict, resolve_weights
from monai_rd.networks.teachers.monai_net import (
    EncoderStage,
    check_swin_unetr_input_size,
    encoder_stage_index,
    encoder_tag,
    encoder_taps,
    require_einops,
    resolve_monai_net,
    window_mean_std,
)
from monai_rd.networks.teachers.registry import register_teacher

__all__ = [
    "SWIN_UNETR_SSL_HU_WINDOW",
    "SWIN_UNETR_SSL_INPUT_SIZE",
    "SWIN_UNETR_SSL_URL",
    "published_to_monai_key",
    "swin_unetr_ssl_teacher",
]

NAME = "swin-unetr-ssl"
SWIN_UNETR_SSL_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/model_swinvit.pt"
SWIN_UNETR_SSL_HU_WINDOW = (-1000.0, 1000.0)
SWIN_UNETR_SSL_INPUT_SIZE = (96, 96, 96)
_FEATURE_SIZE = 48
_FILENAME = "swin_unetr/model_swinvit.pt"
# the published MLP names (timm style) -> MONAI MLPBlock names
_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
# heads of research-contributions' SSLHead (rotation, contrastive, reconstruction): not part of the encoder
_SSL_HEADS = ("rotation_head.*", "contrastive_head.*", "conv.*")


def published_to_monai_key(key: str) -> str:
    """A key of ``model_swinvit.pt`` (``module.`` already stripped) -> the key in MONAI's ``SwinTransformer``.

    Args:
        key: e.g. ``"layers1.0.blocks.0.mlp.fc1.weight"``.

    Returns:
        e.g. ``"layers1.0.blocks.0.mlp.linear1.weight"``; other keys unchanged.
    """
    for old, new in _MLP_RENAMES:
        key = key.replace(old, new)
    return key


@register_teacher(
    NAME,
    architecture="Swin Transformer encoder of MONAI SwinUNETR (swinViT: patch 2, window 7, depths 2-2-2-2, heads "
    "3-6-12-24, feature_size 48, 1 channel)",
    source=f"{SWIN_UNETR_SSL_URL} (self-supervised pre-training on ~5050 CT volumes, Project-MONAI/"
    "research-contributions SwinUNETR/Pretrain)",
    licence="Apache-2.0 (Project-MONAI research-contributions, which publishes the weights; no separate weights "
    "licence)",
    input_size=SWIN_UNETR_SSL_INPUT_SIZE,
    mean=(0.0,),
    std=(1.0,),
    feature_layer="swinViT stage 4 (layers4 output, layer-normalised as SwinUNETR.forward): (D/32, H/32, W/32), "
    "3 x 3 x 3 at 96^3; stage=0..3 for the finer maps (48 * 2**stage channels, /2**(stage+1))",
    out_channels=16 * _FEATURE_SIZE,
    weights_file="model_swinvit.pt",
    checkpoint_layout="{'state_dict': SwinTransformer keys behind 'module.' (module.patch_embed.proj.*, "
    "module.layers<i>.0.blocks.<b>.{norm1,attn.*,norm2,mlp.fc1,mlp.fc2}.*, module.layers<i>.0.downsample.*)}, as "
    "read by SwinUNETR.load_from; mlp.fc1/fc2 are MONAI's mlp.linear1/linear2. SSLHead checkpoints "
    "('module.swin_vit.*') and SwinUNETR checkpoints ('swinViT.*') are accepted through their encoder prefix",
    intensity_range=SWIN_UNETR_SSL_HU_WINDOW,
    axcodes="RAS",
    stages=("layers1", "layers2", "layers3", "layers4"),
)
def swin_unetr_ssl_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
    stage: int | None = None,
    normalize: bool = True,
    data_intensity_range: Sequence[float] | None = None,
    feature_size: int = _FEATURE_SIZE,
) -> FrozenTeacher:
    """SwinUNETR's self-supervised CT encoder as a frozen teacher; only the encoder runs, never a decoder.

    Args:
        weights: ``model_swinvit.pt`` (or a checkpoint in one of the accepted layouts); None uses
            ``<torch hub>/checkpoints/swin_unetr/model_swinvit.pt``, downloading it from :data:`SWIN_UNETR_SSL_URL`
            when possible.
        sha256: optional expected SHA-256 of the file.
        autocast_dtype: optional autocast dtype.
        input_size: (D, H, W) volumes are resized to, each a multiple of 32; None is the pre-training crop 96^3.
        stage: which encoder map: 0 (patch embedding, /2) to 4 (last stage, /32, the default).
        normalize: layer-normalise the map over channels, as ``SwinUNETR.forward`` does with its skips.
        data_intensity_range: the HU window the data transforms mapped to [0, 1]; None means the pre-training window
            :data:`SWIN_UNETR_SSL_HU_WINDOW` (-1000..1000). Another window is mapped onto it (:func:`window_mean_std`).
        feature_size: SwinUNETR ``feature_size`` of the checkpoint: 48 for the published file (other values only for
            checkpoints of that size, e.g. tests).

    Returns:
        A :class:`FrozenTeacher` taking (B, 1, D, H, W) RAS volumes in [0, 1] and returning
        (B, feature_size * 2**stage, D/2**(stage+1), H/2**(stage+1), W/2**(stage+1)) float32 maps, by default
        (B, 768, D/32, H/32, W/32). Named ``swin-unetr-ssl``, with ``@swinViT[<stage>]`` appended for other stages.
        Its stage taps (Deep RD) are the encoder's ``layers1 .. layers4`` maps (``patch_embed`` can be named too),
        layer-normalised like the feature map when ``normalize``: ``feature_size * 2**i`` channels at /2**(i+1).

    Raises:
        ImportError: MONAI's optional ``einops`` (needed by SwinUNETR) is not installed.
        ValueError: an input size that is not a multiple of 32, or a stage out of range.
        WeightsUnavailableError: no local file and no download possible (names the file and where to place it).
        FileNotFoundError: ``weights`` does not exist.
        CheckpointKeyError: the checkpoint does not match the encoder key for key.
    """
    size = tuple(input_size) if input_size is not None else SWIN_UNETR_SSL_INPUT_SIZE
    check_swin_unetr_input_size(size, 2, NAME)
    require_einops(NAME)
    path = resolve_weights(weights, filename=_FILENAME, name=NAME, url=SWIN_UNETR_SSL_URL, sha256=sha256)
    # SwinUNETR's own encoder, so its configuration is exactly the one SwinUNETR.load_from fills; the decoder is
    # dropped right away (never run, and its random weights stay out of the fingerprint)
    network = resolve_monai_net("SwinUNETR")(in_channels=1, out_channels=1, feature_size=feature_size, spatial_dims=3)
    encoder = network.swinViT
    del network
    index = encoder_stage_index(encoder, stage, NAME)
    state = read_state_dict(path, strip="module.", select=("swin_vit.", "swinViT."))
    load_into(encoder, state, source=str(path), rename=published_to_monai_key, ignore=_SSL_HEADS)
    mean, std = window_mean_std(SWIN_UNETR_SSL_HU_WINDOW, data_intensity_range)
    default = index == encoder.num_layers and normalize
    return FrozenTeacher(
        EncoderStage(encoder, index, {"normalize": normalize}),
        input_size=size,
        mean=mean,
        std=std,
        in_channels=1,
        autocast_dtype=autocast_dtype,
        name=NAME if default else f"{NAME}@{encoder_tag('swinViT', index, normalize)}",
        stage_taps=encoder_taps(encoder),
    )
