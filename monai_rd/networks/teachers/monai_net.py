"""Teachers built from ``monai.networks.nets``: the ``monai:<Net>`` prefix.

``create_teacher("monai:SwinUNETR", weights="model.pt", spatial_dims=3, in_channels=1, out_channels=14,
feature_size=48, input_size=(96, 96, 96))`` builds ``monai.networks.nets.SwinUNETR(**kwargs)``, loads the
state_dict file strictly (every key of the network must be in the file and every key of the file in the network;
``prefix="module."`` strips a DistributedDataParallel wrapper) and returns a :class:`FrozenTeacher` whose output is
a dense feature map, taken in one of two ways:

- **image encoder** (networks in :data:`IMAGE_ENCODERS`, e.g. SwinUNETR's ``swinViT``): only the encoder is called,
  on the image, and one of the stage outputs it returns is the map (``stage``, default the last; ``normalize=True``
  layer-normalises it as ``SwinUNETR.forward`` does). The decoder is never run and is not part of the teacher.
- **feature layer** (any network): ``feature_layer="<dotted submodule name>"``; a forward hook on that submodule
  takes its output during the network's own forward and stops the forward there, so later layers (decoder,
  classifier) are never run.

Intensities: like every teacher, the network gets inputs in [0, 1] normalised with ``mean``/``std`` (defaults 0 / 1:
the network sees the [0, 1] input). CT networks trained on a HU window get ``intensity_range=(lo, hi)`` (the window
it was trained with) and ``data_intensity_range`` (the window the data transforms mapped to [0, 1]); the teacher then
maps the data window onto its own with :func:`window_mean_std`.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import EncoderTaps, HookTaps
from monai_rd.networks.teachers.checkpoint import checked_file, load_into, read_state_dict
from monai_rd.networks.teachers.registry import register_teacher_prefix

__all__ = [
    "IMAGE_ENCODERS",
    "EncoderStage",
    "LayerOutput",
    "check_swin_unetr_input_size",
    "encoder_stage_index",
    "encoder_tag",
    "encoder_taps",
    "monai_net_teacher",
    "require_einops",
    "resolve_monai_net",
    "window_mean_std",
]

# network class -> attribute holding an encoder called on the image that returns a list of stage maps
IMAGE_ENCODERS: dict[str, str] = {"SwinUNETR": "swinViT"}
_MAX_NAMES_SHOWN = 30


def window_mean_std(
    intensity_range: Sequence[float], data_intensity_range: Sequence[float] | None, channels: int = 1
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std that map inputs windowed with ``data_intensity_range`` onto a teacher's own window.

    The data transforms map raw intensities ``v`` (e.g. HU) in ``[d0, d1]`` to ``x = (v - d0) / (d1 - d0)``; the
    teacher was trained on ``y = (v - t0) / (t1 - t0)``. Both are affine in ``v``, so ``y = (x - mean) / std`` with
    ``std = (t1 - t0) / (d1 - d0)`` and ``mean = (t0 - d0) / (d1 - d0)``. It is exact when the data window lies
    inside the teacher's (values the data transforms clipped cannot be recovered; values beyond the teacher's window
    are not clipped again).

    Args:
        intensity_range: ``(t0, t1)``, the window the teacher was trained with.
        data_intensity_range: ``(d0, d1)``, the window the data transforms used; None means the same as the teacher's.
        channels: number of channels (the values are repeated).

    Returns:
        ``(mean, std)``, each with ``channels`` values; ``(0, ..), (1, ..)`` when the windows are equal.

    Raises:
        ValueError: a window is not two increasing numbers.
    """
    for name, window in (("intensity_range", intensity_range), ("data_intensity_range", data_intensity_range)):
        if window is not None and (len(window) != 2 or not float(window[0]) < float(window[1])):
            raise ValueError(f"{name} must be two increasing numbers (low, high), got {tuple(window)}.")
    t0, t1 = float(intensity_range[0]), float(intensity_range[1])
    d0, d1 = (t0, t1) if data_intensity_range is None else (float(v) for v in data_intensity_range)
    mean, std = (t0 - d0) / (d1 - d0), (t1 - t0) / (d1 - d0)
    return (mean,) * channels, (std,) * channels


def check_swin_unetr_input_size(input_size: Sequence[int], patch_size: int = 2, name: str = "SwinUNETR") -> None:
    """Refuse an input size SwinUNETR cannot take, before anything runs.

    SwinUNETR embeds ``patch_size`` patches and merges them 4 times, so each side must be a multiple of
    ``patch_size ** 5`` (32 for the default patch size 2).

    Args:
        input_size: spatial size the teacher resizes volumes to.
        patch_size: SwinUNETR's ``patch_size``.
        name: teacher name, for the message.

    Raises:
        ValueError: a side is not a multiple of ``patch_size ** 5``; the message proposes the nearest valid size.
    """
    step = int(patch_size) ** 5
    if any(int(s) % step for s in input_size):
        nearest = tuple(max(step, round(int(s) / step) * step) for s in input_size)
        raise ValueError(
            f"teacher {name!r} cannot take input_size={tuple(input_size)}: each side of a SwinUNETR input must be a "
            f"multiple of {step} (patch_size ** 5). Pass input_size={nearest}."
        )


def require_einops(name: str) -> None:
    """SwinUNETR's blocks import MONAI's optional ``einops`` only when they run; fail at build time instead.

    Args:
        name: teacher name, for the message.

    Raises:
        ImportError: ``einops`` is not installed (the message gives the pip command).
    """
    if importlib.util.find_spec("einops") is None:
        raise ImportError(f"teacher {name!r} (MONAI SwinUNETR) needs MONAI's optional einops: `pip install einops`.")


class EncoderStage(nn.Module):
    """An image encoder that returns a list of stage maps (e.g. SwinUNETR's ``swinViT``), reduced to one stage.

    Args:
        encoder: the encoder; ``encoder(x, **encoder_kwargs)`` returns a list of (B, C_i, *spatial_i) maps.
        stage: index of the returned map (negative counts from the end).
        encoder_kwargs: keyword arguments of every call (e.g. ``{"normalize": True}`` for ``swinViT``).
    """

    def __init__(self, encoder: nn.Module, stage: int, encoder_kwargs: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.stage = stage
        self.encoder_kwargs = dict(encoder_kwargs or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, *spatial) normalised images.

        Returns:
            The stage's map, (B, C_stage, *spatial_stage).
        """
        return self.encoder(x, **self.encoder_kwargs)[self.stage]


class _Captured(Exception):
    """Carries the feature layer's output out of the network's forward (which stops there)."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.output = output


class LayerOutput(nn.Module):
    """A network whose feature map is the output of one of its submodules, taken with a forward hook.

    The hook is on during :meth:`forward` only; it raises as soon as the layer has run, so the layers after it
    (a decoder, a classifier) are never computed. The first call of the layer in a forward is the one taken.

    Args:
        model: the whole network.
        layer: dotted name of the submodule (a key of ``model.named_modules()``).

    Raises:
        ValueError: ``layer`` is not a submodule, or is a container that the forward never calls.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            raise ValueError(_unknown_layer_message(model, layer))
        if isinstance(modules[layer], (nn.ModuleList, nn.ModuleDict)):
            children = [f"{layer}.{n}" for n, _ in modules[layer].named_children()][:_MAX_NAMES_SHOWN]
            raise ValueError(
                f"feature_layer {layer!r} of {type(model).__name__} is a {type(modules[layer]).__name__}, which the "
                f"forward never calls; name one of its entries instead: {children}."
            )
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, *spatial) normalised images.

        Returns:
            The layer's output, (B, C_T, *spatial_T) with as many spatial axes as ``x``.

        Raises:
            RuntimeError: the layer was not called by the forward, or its output is not such a map.
        """

        def hook(module: nn.Module, args: object, output: object) -> None:
            raise _Captured(output)

        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            self.model(x)
        except _Captured as captured:
            out = captured.output
        else:
            raise RuntimeError(
                f"feature_layer {self.layer!r} was not called by {type(self.model).__name__}.forward; name a layer "
                "that the forward runs."
            )
        finally:
            handle.remove()
        if not isinstance(out, torch.Tensor) or out.ndim != x.ndim:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(
                f"feature_layer {self.layer!r} returned {got} for an input {tuple(x.shape)}; RD needs a dense "
                f"(B, C, *spatial) map with {x.ndim - 2} spatial axes: name a convolutional layer or block."
            )
        return out


def _unknown_layer_message(model: nn.Module, layer: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    top = [n for n, _ in model.named_children()]
    shown = names[:_MAX_NAMES_SHOWN]
    more = f" ... and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return (
        f"feature_layer {layer!r} is not a submodule of {type(model).__name__}. Closest names: {close}; top-level "
        f"modules: {top}; valid names (keys of model.named_modules()): {shown}{more}."
    )


def _network_names() -> list[str]:
    import monai.networks.nets as nets

    names = []
    for n in dir(nets):
        obj = getattr(nets, n)
        if n.startswith("_") or inspect.ismodule(obj):
            continue
        is_factory = inspect.isfunction(obj) and not n.startswith("get_") and n != "drop_connect"
        if (inspect.isclass(obj) and issubclass(obj, nn.Module)) or is_factory:
            names.append(n)
    return sorted(names)


def resolve_monai_net(net_name: str):
    """The class (or factory function, e.g. ``resnet18``) named ``net_name`` in ``monai.networks.nets``.

    Args:
        net_name: e.g. ``"SwinUNETR"``, ``"DenseNet121"``, ``"ResNet"``, ``"resnet10"``.

    Returns:
        The callable building the network.

    Raises:
        KeyError: no such network (the message lists close names).
    """
    import monai.networks.nets as nets

    obj = getattr(nets, net_name, None) if net_name and not net_name.startswith("_") else None
    if obj is None or inspect.ismodule(obj) or not callable(obj):
        names = _network_names()
        close = difflib.get_close_matches(net_name, names, n=5, cutoff=0.4)
        raise KeyError(
            f"'monai:{net_name}': monai.networks.nets has no network {net_name!r} (names are case-sensitive). "
            f"Closest: {close}; all: {names}."
        )
    return obj


def _build(net_name: str, net_kwargs: Mapping[str, object]) -> nn.Module:
    factory = resolve_monai_net(net_name)
    try:
        model = factory(**net_kwargs)
    except (TypeError, ValueError) as e:
        try:
            signature = f"{net_name}{inspect.signature(factory)}"
        except (TypeError, ValueError):
            signature = net_name
        raise ValueError(
            f"monai.networks.nets.{net_name}(**{dict(net_kwargs)}) failed: {e}. Pass the constructor arguments of "
            f"{signature} (they must match the checkpoint)."
        ) from e
    if not isinstance(model, nn.Module):
        raise KeyError(
            f"'monai:{net_name}': monai.networks.nets.{net_name} returned {type(model).__name__}, not a network."
        )
    return model


def encoder_stage_index(encoder: nn.Module, stage: int | None, name: str) -> int:
    """Non-negative index of ``stage`` among the maps a SwinTransformer-like encoder returns.

    Args:
        encoder: e.g. SwinUNETR's ``swinViT`` (``num_layers`` stages after the patch embedding).
        stage: requested stage; None is the last; negative counts from the end.
        name: teacher name, for the message.

    Returns:
        The index in ``0 .. num_layers``.

    Raises:
        ValueError: the stage is out of range.
    """
    n_stages = int(getattr(encoder, "num_layers", 4)) + 1  # the patch embedding and one map per stage
    index = n_stages - 1 if stage is None else int(stage)
    if not -n_stages <= index < n_stages:
        raise ValueError(
            f"teacher {name!r}: stage={stage} is out of range; the encoder returns {n_stages} maps (stages 0 to "
            f"{n_stages - 1}, or -1 for the last)."
        )
    return index % n_stages


def encoder_tag(attr: str, stage: int, normalize: bool) -> str:
    """The feature map's identity in a teacher's name (so its fingerprint differs per stage), e.g. ``swinViT[4]``."""
    return f"{attr}[{stage}]" + ("" if normalize else ",normalize=False")


def encoder_taps(encoder: nn.Module) -> EncoderTaps:
    """Deep RD stage taps of a SwinTransformer-like encoder held by an :class:`EncoderStage`: its maps named
    ``patch_embed`` (stage 0) and ``layers1 .. layers<num_layers>`` (MONAI's attribute names), the default being
    ``layers1 .. layers4`` (strides 4 to 32).

    Args:
        encoder: e.g. SwinUNETR's ``swinViT``.
    """
    n = int(getattr(encoder, "num_layers", 4))
    names = ["patch_embed"] + [f"layers{i}" for i in range(1, n + 1)]
    return EncoderTaps(names[1:], {name: i for i, name in enumerate(names)})


def _hook_taps(model: nn.Module) -> HookTaps:
    # MONAI ResNets (and torchvision-style networks) have layer1..layer4; other networks name their taps
    default = ("layer1", "layer2", "layer3", "layer4")
    modules = dict(model.named_modules())
    return HookTaps(default if all(n in modules for n in default) else (), root="model")


@register_teacher_prefix("monai")
def monai_net_teacher(
    net_name: str,
    weights: str | os.PathLike | None = None,
    sha256: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    input_size: Sequence[int] | None = None,
    feature_layer: str | None = None,
    stage: int | None = None,
    normalize: bool = True,
    prefix: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    intensity_range: Sequence[float] | None = None,
    data_intensity_range: Sequence[float] | None = None,
    **net_kwargs,
) -> FrozenTeacher:
    """Any ``monai.networks.nets`` network with a state_dict file as a frozen teacher returning a dense map.

    Args:
        net_name: class or factory in ``monai.networks.nets`` (case-sensitive), e.g. ``SwinUNETR``, ``DenseNet121``.
        weights: the network's state_dict file (required; nesting such as ``{"state_dict": ...}`` is unwrapped),
            loaded strictly.
        sha256: optional expected SHA-256 of ``weights``.
        autocast_dtype: optional autocast dtype.
        input_size: spatial size volumes/images are resized to before the network (required), e.g. (96, 96, 96).
        feature_layer: dotted submodule name whose output is the map (forward hook; the forward stops there).
            Required for networks without an image encoder in :data:`IMAGE_ENCODERS`.
        stage: for networks with an image encoder (SwinUNETR): which of its maps, 0 (patch embedding, /2) to 4
            (last stage, /32); None is the last. Not with ``feature_layer``.
        normalize: for SwinUNETR's encoder: layer-normalise the map over channels, as ``SwinUNETR.forward`` does.
        prefix: key prefix of ``weights`` to select and strip (e.g. ``"module."``); keys without it are dropped when
            some key has it.
        mean: per-channel normalisation mean on [0, 1] inputs (default 0: the network sees the [0, 1] input).
        std: per-channel std (default 1).
        intensity_range: the raw window (e.g. HU) the network was trained on, mapped to [0, 1]; with
            ``data_intensity_range`` sets ``mean``/``std`` (:func:`window_mean_std`).
        data_intensity_range: the raw window the data transforms map to [0, 1] before the teacher.
        net_kwargs: the network's constructor arguments (e.g. ``spatial_dims=3, in_channels=1, feature_size=48``).

    Returns:
        A :class:`FrozenTeacher` named ``monai:<Net>@<layer>`` (e.g. ``monai:SwinUNETR@swinViT[4]``) that takes
        (B, 1 or C, *spatial) inputs in [0, 1] and returns (B, C_T, *spatial_T) float32 maps. Its stage taps (Deep
        RD): with an image encoder, the encoder's maps (:func:`encoder_taps`); otherwise any submodule, taken with
        forward hooks (no library extracts from MONAI networks), ``layer1 .. layer4`` by default where the network
        has them (MONAI's ResNets); other networks name them with ``create_teacher(..., stages=[<paths>])``.

    Raises:
        KeyError: ``net_name`` is not a network of ``monai.networks.nets``.
        ImportError: SwinUNETR without ``einops`` installed.
        ValueError: missing ``weights``/``input_size``/``feature_layer``, a ``feature_layer`` not in the network, a
            stage out of range, an input size SwinUNETR cannot take, or constructor arguments the network refuses.
        FileNotFoundError: ``weights`` does not exist.
        CheckpointKeyError: the file's keys do not match the network (the message names them).
    """
    teacher_name = f"monai:{net_name}"
    resolve_monai_net(net_name)  # an unknown name is reported before the other options
    if weights is None:
        hint = " (for SwinUNETR's self-supervised CT weights use the teacher 'swin-unetr-ssl')"
        hint = hint if net_name == "SwinUNETR" else ""
        raise ValueError(f"teacher {teacher_name!r} needs weights=<state_dict file of the network>{hint}.")
    if input_size is None:
        raise ValueError(
            f"teacher {teacher_name!r} needs input_size=<spatial size the inputs are resized to>, e.g. (96, 96, 96) "
            "for 3D networks."
        )
    if feature_layer is not None and stage is not None:
        raise ValueError(f"teacher {teacher_name!r}: give feature_layer or stage, not both.")
    encoder_attr = IMAGE_ENCODERS.get(net_name)
    if feature_layer is None and encoder_attr is None:
        raise ValueError(
            f"teacher {teacher_name!r} needs feature_layer=<dotted submodule name> (the layer whose output is the "
            f"feature map); only {sorted(IMAGE_ENCODERS)} have an image encoder used by default."
        )
    if (intensity_range is None) != (data_intensity_range is None):
        raise ValueError(
            f"teacher {teacher_name!r}: intensity_range (the network's training window) and data_intensity_range "
            "(the data transforms' window) go together; give both or neither."
        )
    if intensity_range is not None and (mean is not None or std is not None):
        raise ValueError(f"teacher {teacher_name!r}: give mean/std or intensity_range/data_intensity_range, not both.")

    model = _build(net_name, net_kwargs)
    from monai.networks.nets import SwinUNETR

    if isinstance(model, SwinUNETR):
        check_swin_unetr_input_size(input_size, model.patch_size, teacher_name)
        require_einops(teacher_name)
    path = checked_file(weights, name=teacher_name, sha256=sha256)
    load_into(model, read_state_dict(path, select=prefix or ()), source=str(path))

    if feature_layer is not None:
        features: nn.Module = LayerOutput(model, feature_layer)
        tag = feature_layer
        taps: EncoderTaps | HookTaps = _hook_taps(model)
    else:
        assert encoder_attr is not None
        encoder = getattr(model, encoder_attr)
        index = encoder_stage_index(encoder, stage, teacher_name)
        # only the encoder is kept: the decoder never runs and its weights do not enter the fingerprint
        features = EncoderStage(encoder, index, {"normalize": normalize})
        tag = encoder_tag(encoder_attr, index, normalize)
        taps = encoder_taps(encoder)

    channels = int(net_kwargs.get("in_channels", net_kwargs.get("n_input_channels", len(mean) if mean else 1)))
    if intensity_range is not None:
        mean, std = window_mean_std(intensity_range, data_intensity_range, channels)
    return FrozenTeacher(
        features,
        input_size=tuple(input_size),
        mean=tuple(mean) if mean is not None else (0.0,) * channels,
        std=tuple(std) if std is not None else (1.0,) * channels,
        in_channels=channels,
        autocast_dtype=autocast_dtype,
        name=f"{teacher_name}@{tag}",
        stage_taps=taps,
    )
