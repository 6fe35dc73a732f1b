"""Registry of foundation-model teachers: ``create_teacher(name, weights=None, **kwargs)`` -> :class:`FrozenTeacher`.

Named teachers (the paper's PMC-CLIP, RadImageNet and LVM-Med encoders, BiomedCLIP, RAD-DINO, EfficientNet-Lite0)
are registered with :func:`register_teacher` together with a :class:`TeacherSpec` that records the exact
architecture, the source and licence of the weights, the native input size and normalisation, and the feature layer
Reprogramming Distillation uses. Names with a prefix build any model a library can build:

- ``timm:<name>`` (including ``timm:hf-hub:<repo>`` and ``timm:local-dir:<folder>``),
- ``torchvision:<name>``,
- ``open_clip:<model>[@<pretrained tag>]`` (including ``open_clip:hf-hub:<repo>``),
- ``torchscript:<file>`` (a scripted/traced model),
- ``state_dict:<arch>`` with ``weights=<file>`` (a plain state_dict for a named architecture),
- ``monai:<Net>`` with ``weights=<file>`` (a ``monai.networks.nets`` network, e.g. SwinUNETR).

Stage taps (Deep RD, :meth:`FrozenTeacher.stage_maps`): a named teacher's spec lists its default taps
(:attr:`TeacherSpec.stages`); prefixed teachers get them by rule: ``timm:`` the last 4 entries of the model's
``feature_info`` (a ViT: 4 evenly spaced blocks, final norm applied), ``torchvision:`` ``layer1..layer4`` of ResNets
and ``block1..block4`` of RegNets, else the last module of ``features`` at each of its last 4 strides, ``monai:``
``layer1..layer4`` where the network has them and the encoder's ``layers1..layers4`` for SwinUNETR, ``open_clip:``
as its timm trunk or ``layer1..layer4``. ``create_teacher(name, stages=[...])`` names other taps: any tap name
the error of an unknown one lists (submodule paths for torchvision and monai networks, ``feature_info`` modules
for timm).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.stage_taps import StageTaps
from monai_rd.networks.teachers.checkpoint import load_into, read_state_dict

__all__ = [
    "TeacherSpec",
    "create_teacher",
    "get_teacher_spec",
    "list_teacher_prefixes",
    "list_teachers",
    "load_teacher",
    "register_teacher",
    "register_teacher_prefix",
    "wrap_teacher",
]

TeacherBuilder = Callable[..., FrozenTeacher]


@dataclass(frozen=True)
class TeacherSpec:
    """What a named teacher is, and how RD uses it.

    Attributes:
        name: registry name.
        architecture: exact architecture (e.g. "torchvision ResNet-50").
        source: where the published weights come from.
        licence: licence of the weights/code release.
        input_size: native spatial input size (H, W).
        mean: per-channel normalisation mean (on [0, 1] intensities).
        std: per-channel normalisation std.
        feature_layer: the layer whose output RD distils from.
        out_channels: channels C_T of that feature map.
        weights_file: file name of the published checkpoint (what a user places when offline), if any.
        checkpoint_layout: key layout of the published checkpoint.
        builder: function ``(weights, sha256=None, **kwargs) -> FrozenTeacher``.
        intensity_range: for CT/MR teachers, the raw intensity window (e.g. HU) the data transforms map to [0, 1]
            before the teacher (which expects [0, 1]); None for natural-image teachers.
        spacing: voxel spacing (mm) the teacher was trained at, resampled to by the data transforms; None when the
            teacher resizes to ``input_size`` instead.
        axcodes: orientation of the teacher's input axes (e.g. ``"RAS"``), set by the data transforms.
        stages: the default stage taps of :meth:`FrozenTeacher.stage_maps` (Deep RD), shallow to deep, for the
            published architecture (a test build with fewer blocks has fewer); the last is the feature layer where
            the two coincide.
    """

    name: str
    architecture: str
    source: str
    licence: str
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_layer: str
    out_channels: int
    weights_file: str | None = None
    checkpoint_layout: str = ""
    builder: TeacherBuilder | None = field(default=None, repr=False, compare=False)
    intensity_range: tuple[float, float] | None = None
    spacing: tuple[float, ...] | None = None
    axcodes: str | None = None
    stages: tuple[str, ...] = ()


_TEACHERS: dict[str, TeacherSpec] = {}
_PREFIXES: dict[str, TeacherBuilder] = {}
_BUILTIN_MODULES = (
    "monai_rd.networks.teachers.pmc_clip",
    "monai_rd.networks.teachers.radimagenet",
    "monai_rd.networks.teachers.lvm_med",
    "monai_rd.networks.teachers.biomedclip",
    "monai_rd.networks.teachers.rad_dino",
    "monai_rd.networks.teachers.generic",
    "monai_rd.networks.teachers.astra",
    "monai_rd.networks.teachers.monai_net",
    "monai_rd.networks.teachers.swin_unetr_ssl",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def register_teacher(
    name: str,
    *,
    architecture: str,
    source: str,
    licence: str,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    feature_layer: str,
    out_channels: int,
    weights_file: str | None = None,
    checkpoint_layout: str = "",
    intensity_range: Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    axcodes: str | None = None,
    stages: Sequence[str] = (),
) -> Callable[[TeacherBuilder], TeacherBuilder]:
    """Decorator registering a teacher builder under ``name`` with its :class:`TeacherSpec`.

    Args:
        name: registry name (lower case, no ``:``).
        architecture: exact architecture.
        source: where the weights come from.
        licence: licence of the weights.
        input_size: native (H, W).
        mean: normalisation mean.
        std: normalisation std.
        feature_layer: the feature layer RD uses.
        out_channels: channels of that layer.
        weights_file: published checkpoint file name.
        checkpoint_layout: key layout of the published checkpoint.
        intensity_range: raw intensity window mapped to [0, 1] before the teacher (e.g. HU for CT teachers).
        spacing: voxel spacing the teacher expects (3D teachers), if any.
        axcodes: input orientation the teacher expects (3D teachers), if any.
        stages: the default stage taps its builder gives the teacher (Deep RD).

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: the name is taken or contains ``:``.
    """

    def decorator(builder: TeacherBuilder) -> TeacherBuilder:
        if ":" in name:
            raise ValueError(f"teacher name {name!r} may not contain ':' (reserved for prefixes).")
        if name in _TEACHERS and _TEACHERS[name].builder is not builder:
            raise ValueError(f"teacher {name!r} is already registered.")
        _TEACHERS[name] = TeacherSpec(
            name=name,
            architecture=architecture,
            source=source,
            licence=licence,
            input_size=tuple(input_size),
            mean=tuple(mean),
            std=tuple(std),
            feature_layer=feature_layer,
            out_channels=out_channels,
            weights_file=weights_file,
            checkpoint_layout=checkpoint_layout,
            builder=builder,
            intensity_range=(float(intensity_range[0]), float(intensity_range[1])) if intensity_range else None,
            spacing=tuple(float(v) for v in spacing) if spacing else None,
            axcodes=axcodes,
            stages=tuple(stages),
        )
        return builder

    return decorator


def register_teacher_prefix(prefix: str) -> Callable[[TeacherBuilder], TeacherBuilder]:
    """Decorator registering a builder for names ``<prefix>:<rest>``; it is called as ``builder(rest, weights, **kw)``.

    Args:
        prefix: the prefix without the colon.

    Returns:
        The decorator.
    """

    def decorator(builder: TeacherBuilder) -> TeacherBuilder:
        _PREFIXES[prefix] = builder
        return builder

    return decorator


def list_teachers() -> list[str]:
    """Names of the registered teachers (each documented in ``docs/teachers.md``).

    Returns:
        Sorted names; prefixed names (:func:`list_teacher_prefixes`) are accepted as well.
    """
    _load_builtins()
    return sorted(_TEACHERS)


def list_teacher_prefixes() -> list[str]:
    """Prefixes accepted by :func:`create_teacher`, e.g. ``"timm"`` for ``"timm:convnext_tiny"``.

    Returns:
        Sorted prefixes.
    """
    _load_builtins()
    return sorted(_PREFIXES)


def get_teacher_spec(name: str) -> TeacherSpec:
    """The :class:`TeacherSpec` of a registered teacher.

    Args:
        name: registry name.

    Returns:
        Its spec.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    _load_builtins()
    if name not in _TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; registered: {sorted(_TEACHERS)}; prefixes: {sorted(_PREFIXES)}.")
    return _TEACHERS[name]


def create_teacher(
    name: str, weights: str | os.PathLike | None = None, stages: Sequence[str] | None = None, **kwargs
) -> FrozenTeacher:
    """Build a frozen teacher by name.

    Args:
        name: a registered name (:func:`list_teachers`) or ``<prefix>:<model>`` (:func:`list_teacher_prefixes`).
        weights: local checkpoint (file, or folder for Hugging Face style teachers); None uses the standard cache
            and downloads into it when possible.
        stages: the stage taps :meth:`FrozenTeacher.stage_maps` returns (Deep RD); None keeps the teacher's
            default taps.
        kwargs: passed to the builder, e.g. ``sha256="<hex>"`` (checked before loading), ``autocast_dtype``,
            ``input_size``; family-specific options are documented on each builder.

    Returns:
        A :class:`FrozenTeacher` (frozen, eval mode, own preprocessing) returning the spec's feature map.

    Raises:
        KeyError: unknown name or prefix.
        WeightsUnavailableError: weights neither local nor downloadable (names the file and where to place it).
        CheckpointKeyError: the checkpoint's keys do not match the architecture.
        ValueError: ``stages`` for a teacher without stage taps, or a name that is not one of its taps.
    """
    _load_builtins()
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix not in _PREFIXES:
            raise KeyError(f"unknown teacher prefix {prefix!r} in {name!r}; known prefixes: {sorted(_PREFIXES)}.")
        teacher = _PREFIXES[prefix](rest, weights, **kwargs)
    else:
        spec = get_teacher_spec(name)
        assert spec.builder is not None
        teacher = spec.builder(weights, **kwargs)
    return teacher.select_stages(stages) if stages is not None else teacher


def wrap_teacher(
    model,
    spec_name: str,
    feature_fn: str | Callable | None,
    *,
    num_prefix_tokens: int = 0,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    autocast_dtype=None,
    stage_taps: StageTaps | None = None,
) -> FrozenTeacher:
    """Wrap a loaded model as a :class:`FrozenTeacher` with the registered spec's preprocessing.

    Args:
        model: the model with its weights loaded.
        spec_name: registered name whose input size, mean and std are the defaults.
        feature_fn: see :class:`FrozenTeacher`.
        num_prefix_tokens: class/register tokens dropped from token outputs.
        input_size: override of the native input size.
        mean: override of the mean (e.g. read from the checkpoint's own preprocessing config).
        std: override of the std.
        autocast_dtype: optional autocast dtype.
        stage_taps: the teacher's stage taps (Deep RD); their default should be the spec's ``stages``.

    Returns:
        The frozen teacher, named ``spec_name``.
    """
    spec = _TEACHERS[spec_name]
    return FrozenTeacher(
        model,
        input_size=tuple(input_size) if input_size is not None else spec.input_size,
        mean=tuple(mean) if mean is not None else spec.mean,
        std=tuple(std) if std is not None else spec.std,
        in_channels=len(mean) if mean is not None else len(spec.mean),
        feature_fn=feature_fn,
        num_prefix_tokens=num_prefix_tokens,
        autocast_dtype=autocast_dtype,
        name=spec_name,
        stage_taps=stage_taps,
    )


def load_teacher(
    spec_name: str,
    model: nn.Module,
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor] | None = None,
    *,
    trunk: Callable[[nn.Module], nn.Module] | None = None,
    feature_fn: str | Callable | None = None,
    rename: Callable[[str], str] | None = None,
    ignore: Iterable[str] = (),
    **wrap_kwargs,
) -> FrozenTeacher:
    """The common end of a named teacher's builder: load its checkpoint strictly, then wrap it (:func:`wrap_teacher`).

    Args:
        spec_name: registered name whose input size, mean and std are the defaults.
        model: the architecture, with the module names the (renamed) checkpoint keys must match.
        path: the resolved checkpoint file (named in key errors).
        state: the checkpoint's tensors in the published layout; None reads ``path`` (:func:`read_state_dict`).
        trunk: maps the loaded model to the module RD distils from (e.g. conv1..layer4); None keeps the model.
        feature_fn: see :class:`FrozenTeacher`.
        rename: published key -> module key, applied before matching.
        ignore: ``fnmatch`` patterns of checkpoint keys deliberately left unused (e.g. a classifier head).
        wrap_kwargs: passed to :func:`wrap_teacher` (``input_size``, ``mean``, ``std``, ``num_prefix_tokens``,
            ``autocast_dtype``, ``stage_taps``).

    Returns:
        The frozen teacher, named ``spec_name``.

    Raises:
        CheckpointKeyError: a key is missing, unexpected (and not ignored) or mis-shaped.
    """
    load_into(model, read_state_dict(path) if state is None else state, source=str(path), rename=rename, ignore=ignore)
    return wrap_teacher(trunk(model) if trunk is not None else model, spec_name, feature_fn, **wrap_kwargs)
