"""What a trained model needs to be used, written beside ``model.pt`` and read back by evaluation, inference
and export, so none of the training overrides has to be repeated, and none can be contradicted silently.

A model trained with ``--image_size 32`` and evaluated with the bundle's default 224 answers confidently on
inputs prepared differently from its training. Training therefore writes ``models/model_meta.json`` (input size
and channels, intensity scaling, spatial dims, class names in order, multi-label or not, student architecture,
the bundle, and the monai_rd version and commit that trained it, plus MONAI's ``network_data_format``); the
evaluation, inference and export configs take these values from it, and refuse an option that contradicts it.

A segmentation model's spec (``"task": "segmentation"``) records what its sliding-window inference needs instead:
class names (background first), spatial dims, channels, the window size, the intensity window, the orientation
and voxel size its inputs were resampled to, and the UNet's channels, strides and residual units.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

from monai_rd.errors import CheckpointMismatchError, MissingModelError, OptionError

__all__ = [
    "MODEL_SPEC_FILE",
    "SEGMENTATION_FIELDS",
    "SPEC_FORMAT",
    "as_class_names",
    "check_export_metadata",
    "deploys_teacher",
    "model_spec",
    "read_model_spec",
    "segmentation_model_spec",
    "spec_fields",
    "write_model_spec",
]

MODEL_SPEC_FILE = "model_meta.json"
SPEC_FORMAT = 1
# the spec's fields a user could also pass as options, with the option names
USER_FIELDS = ("class_names", "image_size", "in_channels", "multi_label", "student", "spatial_dims")
# how files are read (monai_rd.transforms.LoadImage2D); None: not given, take the model's
READING_FIELDS = ("frame", "window", "slice_axis", "slice_index", "projection")
# a segmentation model's fields, each also an option of the segmentation recipe
SEGMENTATION_FIELDS = (
    "class_names",
    "spatial_dims",
    "in_channels",
    "roi_size",
    "intensity_range",
    "axcodes",
    "pixdim",
    "student",
    "student_channels",
    "student_strides",
    "student_res_units",
)
# an inference choice, not a property of the fully convolutional model: a given value replaces the trained one
SEGMENTATION_CHOICES = ("roi_size",)
TASKS = ("classification", "segmentation")
INTENSITY = "each image scaled to [0, 1] (monai.transforms.ScaleIntensity), gray (luma) when in_channels is 1"


def as_class_names(value: Any, name: str = "class_names") -> list[str]:
    """A non-empty list of distinct class names (the labels' order).

    Raises:
        OptionError: not a list of at least two distinct strings.
    """
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) < 2:
        raise OptionError(
            f"--{name} must be a list of at least two class names, e.g. \"['benign','malignant']\"; got {value!r}."
        )
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        raise OptionError(f"--{name} lists a class twice: {names}.")
    return names


def _commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def model_spec(
    class_names: Sequence[str],
    image_size: int,
    in_channels: int,
    multi_label: bool,
    student: str,
    bundle_root: str,
    spatial_dims: int = 2,
    reading: dict[str, Any] | None = None,
    method: str = "rd",
) -> dict[str, Any]:
    """The spec of a model being trained.

    Args:
        class_names: classes in output order.
        image_size: square (cubic) input size in pixels (voxels).
        in_channels: input channels (1 gray, 3 RGB).
        multi_label: independent sigmoid outputs instead of one softmax.
        student: the student architecture name (as ``StudentClassifier(backbone=...)`` takes it).
        bundle_root: the bundle folder; its name identifies the bundle.
        spatial_dims: 2 for images, 3 for volumes.
        reading: how files were read (``frame``, ``window``, ``slice_axis``, ``slice_index``, ``projection`` of
            :class:`~monai_rd.transforms.LoadImage2D`), so inference reads new files the same way.
        method: the training method (``--method``): what ``model.pt`` holds (a student, or a teacher's head).

    Returns:
        The spec, JSON-serialisable.

    Raises:
        OptionError: ``spatial_dims`` is not 2 or 3.
    """
    from monai_rd import __version__

    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise OptionError(f"--spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}.")
    names = list(class_names)
    shape = [int(image_size)] * int(spatial_dims)
    return {
        "format": SPEC_FORMAT,
        "bundle": os.path.basename(os.path.normpath(bundle_root)),
        "monai_rd_version": __version__,
        "monai_rd_commit": _commit(),
        "method": str(method),
        "class_names": names,
        "image_size": int(image_size),
        "in_channels": int(in_channels),
        "multi_label": bool(multi_label),
        "student": str(student),
        "spatial_dims": int(spatial_dims),
        "intensity": INTENSITY,
        "reading": json.loads(json.dumps(dict(reading or {}))),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "any",
                                 "num_channels": int(in_channels), "spatial_shape": shape, "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": len(names),
                                 "spatial_shape": [len(names)], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False,
                                 "activation": "sigmoid" if multi_label else "softmax",
                                 "channel_def": {str(i): c for i, c in enumerate(names)}}},
        },
    }


def deploys_teacher(method: str, task: str = "classification") -> bool:
    """Whether a model trained with ``--method method`` is the teacher with a head (``probe``, ``finetune``,
    ``lora``) rather than a student."""
    from monai_rd.methods import TeacherBaseline, get_method_spec

    return issubclass(get_method_spec(method, task=task).impl[task], TeacherBaseline)


# what a deployment reads from MONAI's network_data_format, compared with the trained model's before an export
_FORMAT_FIELDS = (
    ("inputs", "image", "num_channels"),
    ("inputs", "image", "spatial_shape"),
    ("outputs", "pred", "num_channels"),
    ("outputs", "pred", "channel_def"),
)


def _format_field(fmt: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        fmt = fmt.get(key) if isinstance(fmt, dict) else None
    if isinstance(fmt, dict):
        return {str(k): str(v) for k, v in fmt.items()}
    return [int(v) for v in fmt] if isinstance(fmt, list) and all(isinstance(v, (int, float)) for v in fmt) else fmt


def check_export_metadata(meta: Any, spec: dict[str, Any], ckpt_dir: str) -> None:
    """Refuse an export by MONAI's ``ckpt_export`` (or ``onnx_export``, ``trt_export``) that would embed metadata
    describing another model than the trained one; elsewhere (``run``, ``monai_rd.export``) do nothing.

    MONAI embeds the ``--meta_file`` as it is (by default the bundle's ``configs/metadata.json``, written for the
    bundle's defaults): a model trained at 32 px for 3 classes would be shipped saying 224 px and 5 classes. The
    inference recipe's ``network_def`` requires this check, so it runs whenever an exporter builds the network
    (after the exporter's own ``--key`` overrides are checked: :func:`~monai_rd.bundle.check_command_line`).

    Args:
        meta: the metadata the exporter will embed (the config's ``_meta_``).
        spec: the trained model's spec (:func:`read_model_spec`).
        ckpt_dir: the model's folder (for the message).

    Raises:
        OptionError: the metadata's input channels or size, or its output classes, differ from the model's (names
            both, and the override that embeds the model's own description).
    """
    from monai_rd.bundle.command_line import EXPORT_COMMANDS, check_command_line, running_command

    if running_command() not in EXPORT_COMMANDS:
        return
    check_command_line()
    given = meta.get("network_data_format") if isinstance(meta, dict) else None
    if not given:
        return
    trained = spec["network_data_format"]
    diff = [
        f"{'#'.join(keys)}: {_format_field(given, keys)!r} (the model: {_format_field(trained, keys)!r})"
        for keys in _FORMAT_FIELDS
        if _format_field(given, keys) != _format_field(trained, keys)
    ]
    if diff:
        spec_file = os.path.join(ckpt_dir, MODEL_SPEC_FILE)
        raise OptionError(
            "the metadata the export would embed (--meta_file) describes another model than the one in "
            f"{ckpt_dir}: " + "; ".join(diff) + ". Embed the trained model's own description: add "
            f"--_meta_#network_data_format \"%{spec_file}#network_data_format\" to the command."
        )


def spec_fields(task: str) -> tuple[str, ...]:
    """The options a trained model of ``task`` fixes (evaluation and inference take them from its spec).

    Raises:
        ValueError: an unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}.")
    return USER_FIELDS if task == "classification" else SEGMENTATION_FIELDS


def _segmentation_value(key: str, value: Any, spatial_dims: int) -> Any:
    """``value`` of segmentation field ``key`` in the spec's form (lists, ints, floats), checked."""
    from monai_rd.utils import options

    if key == "class_names":
        return as_class_names(value)
    if key in ("spatial_dims", "in_channels", "student_res_units"):
        return options.as_int(value, key, min_value=0 if key == "student_res_units" else 1)
    if key == "roi_size":
        return options.as_int_list(value, key, length=spatial_dims, min_value=1)
    if key in ("student_channels", "student_strides"):
        return options.as_int_list(value, key, min_value=1)
    if key == "intensity_range":
        return options.as_float_list(value, key, length=2)
    if key == "pixdim":
        return options.as_optional_float_list(value, key, length=spatial_dims, positive=True)
    if key == "axcodes":
        return options.as_optional_str(value, key)
    return str(value)


def segmentation_model_spec(bundle_root: str, method: str = "rd", **fields: Any) -> dict[str, Any]:
    """The spec of a segmentation model being trained (the shared segmentation recipe's ``model_spec``).

    Args:
        bundle_root: the bundle folder; its name identifies the bundle.
        fields: every one of :data:`SEGMENTATION_FIELDS`: ``class_names`` (background first), ``spatial_dims``,
            ``in_channels``, ``roi_size`` (the sliding window, one size per axis), ``intensity_range`` (the raw
            window scaled to [0, 1]), ``axcodes`` and ``pixdim`` (orientation and voxel size in mm the inputs are
            resampled to; None: as read), ``student`` and its ``student_channels``, ``student_strides`` and
            ``student_res_units``.
        method: the training method (``--method``).

    Returns:
        The spec, JSON-serialisable, with MONAI's ``network_data_format`` (one probability channel per class).

    Raises:
        ValueError: a field is missing or unknown.
        OptionError: a field's value is malformed (names the option).
    """
    from monai_rd import __version__

    missing, unknown = set(SEGMENTATION_FIELDS) - set(fields), set(fields) - set(SEGMENTATION_FIELDS)
    if missing or unknown:
        raise ValueError(f"segmentation_model_spec: missing fields {sorted(missing)}, unknown {sorted(unknown)}.")
    dims = _segmentation_value("spatial_dims", fields["spatial_dims"], 0)
    if dims not in (2, 3):
        raise OptionError(f"--spatial_dims must be 2 (images) or 3 (volumes), got {fields['spatial_dims']!r}.")
    values = {k: _segmentation_value(k, fields[k], dims) for k in SEGMENTATION_FIELDS}
    names = values["class_names"]
    return {
        "format": SPEC_FORMAT,
        "task": "segmentation",
        "bundle": os.path.basename(os.path.normpath(bundle_root)),
        "monai_rd_version": __version__,
        "monai_rd_commit": _commit(),
        "method": str(method),
        **values,
        "intensity": "intensity_range scaled to [0, 1] and clipped (monai.transforms.ScaleIntensityRanged)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "any",
                                 "num_channels": values["in_channels"], "spatial_shape": values["roi_size"],
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(names),
                                 "spatial_shape": values["roi_size"], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {str(i): c for i, c in enumerate(names)}}},
        },
    }


def write_model_spec(spec: dict[str, Any], ckpt_dir: str) -> str:
    """Write ``spec`` to ``ckpt_dir/model_meta.json`` (atomically); returns the path."""
    from monai_rd.utils.files import write_json_atomic

    path = os.path.join(ckpt_dir, MODEL_SPEC_FILE)
    write_json_atomic(spec, path)
    return path


def read_model_spec(
    ckpt_dir: str,
    bundle_root: str,
    task: str = "classification",
    model_file: str | None = None,
    student_only: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """The spec of a trained model, checked against the bundle and the options the user gave.

    Args:
        ckpt_dir: the folder of ``model.pt`` and ``model_meta.json``.
        bundle_root: the bundle using the model; it must be the one that trained it.
        task: ``classification`` or ``segmentation``: the recipe reading the model.
        model_file: the weights about to be loaded (e.g. ``<ckpt_dir>/model.pt``); when given it must exist (a run
            that stopped or diverged before its first improving validation leaves ``model_meta.json`` alone).
        student_only: refuse a model that deploys the teacher (``--method probe``, ``finetune``, ``lora``): its
            ``model.pt`` holds the teacher's head, which inference and export (a student's network) cannot load.
        options: ``method`` (a model trained before monai_rd recorded its method counts as this, or ``rd``);
            classification: ``class_names``, ``image_size``, ``in_channels``, ``multi_label``, ``student``,
            ``spatial_dims`` and the reading options (``frame``, ``window``, ...); segmentation: the
            :data:`SEGMENTATION_FIELDS`; as the user gave them (None: not given, take the model's). A given
            ``roi_size`` (the sliding window) is an inference choice: it replaces the trained one in the returned spec.

    Returns:
        The spec.

    Raises:
        FileNotFoundError: no ``model_meta.json`` beside the model.
        MissingModelError: ``model_file`` is given and does not exist.
        CheckpointMismatchError: the model was trained by another bundle or for another task, by another monai_rd
            version (major.minor), or with an unknown spec format; with ``student_only``, it deploys the teacher.
        OptionError: a given option contradicts the model (names both values).
    """
    from monai_rd import __version__

    path = os.path.join(ckpt_dir, MODEL_SPEC_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: it records the input size, channels and classes the model in {ckpt_dir} was trained "
            "with, and training writes it beside model.pt. Point --ckpt_dir at a training run's models folder."
        )
    if model_file is not None and not os.path.isfile(model_file):
        raise MissingModelError(
            f"{model_file} does not exist, though {path} does: the training run in {ckpt_dir} saved no model (model.pt "
            "is written at the first validation that improves; a run stopped or diverged before that saves none: "
            "see its log). Continue it with --resume true or train again, or point --ckpt_dir at a finished run."
        )
    with open(path) as f:
        spec = json.load(f)
    if spec.get("format") != SPEC_FORMAT:
        raise CheckpointMismatchError(
            f"{path} has spec format {spec.get('format')!r}; this monai_rd reads {SPEC_FORMAT}."
        )
    bundle = os.path.basename(os.path.normpath(bundle_root))
    if spec.get("bundle") != bundle:
        raise CheckpointMismatchError(
            f"the model in {ckpt_dir} was trained by bundle {spec.get('bundle')!r}, not {bundle!r}; use that bundle's "
            "configs, or --ckpt_dir of a model this bundle trained."
        )
    if str(spec.get("monai_rd_version", "")).split(".")[:2] != __version__.split(".")[:2]:
        raise CheckpointMismatchError(
            f"the model in {ckpt_dir} was trained with monai_rd {spec.get('monai_rd_version')}, this is {__version__}; "
            "use that version, or retrain."
        )
    given_method = options.pop("method", None)
    if spec.get("method") is None:  # a model trained before monai_rd recorded its method
        spec["method"] = str(given_method) if given_method is not None else "rd"
    elif given_method is not None and str(given_method).strip().lower() != spec["method"]:
        raise OptionError(
            f"--method {given_method} contradicts the trained model's {spec['method']!r} ({path}); drop the option: "
            "evaluation, inference and export use the model's own method."
        )
    trained_task = spec.get("task", "classification")
    if trained_task != task:
        raise CheckpointMismatchError(
            f"the model in {ckpt_dir} is a {trained_task} model ({path}); this {task} recipe cannot use it."
        )
    if student_only and deploys_teacher(spec["method"], task):
        raise CheckpointMismatchError(
            f"the model in {ckpt_dir} was trained with --method {spec['method']} ({path}): it deploys the frozen "
            "teacher with a head, and its model.pt holds only that head (and the teacher's adaptation), not a "
            "student. Inference and export serve a student: test it with the bundle's evaluate.json (which builds "
            "the teacher), or train a student to deploy (--method rd, kd, student, ...)."
        )
    if task == "segmentation":
        return _check_segmentation_options(spec, path, options)
    for key in USER_FIELDS + READING_FIELDS:
        given = options.get(key)
        if given is None:
            continue
        trained = spec[key] if key in USER_FIELDS else spec.get("reading", {}).get(key)
        value = list(given) if key == "class_names" and not isinstance(given, str) else given
        if key in ("image_size", "in_channels", "spatial_dims", "frame", "slice_axis", "slice_index"):
            try:
                value = int(value)
            except (TypeError, ValueError):
                pass
        if isinstance(value, tuple):
            value = list(value)
        if value != trained:
            raise OptionError(
                f"--{key} {given!r} contradicts the trained model's {trained!r} ({path}); drop the option: "
                "evaluation, inference and export use the model's own values."
            )
    return spec


def _check_segmentation_options(spec: dict[str, Any], path: str, options: dict[str, Any]) -> dict[str, Any]:
    """The spec with the given inference choices (``roi_size``); refuses any other given option that differs from
    the model's (both compared in the spec's form)."""
    unknown = set(options) - set(SEGMENTATION_FIELDS)
    if unknown:
        raise ValueError(f"read_model_spec: unknown segmentation options {sorted(unknown)}.")
    spec = dict(spec)
    for key, given in options.items():
        if given is None or (key in ("axcodes", "pixdim") and str(given).strip().lower() in ("none", "null", "")):
            continue
        value = _segmentation_value(key, given, int(spec["spatial_dims"]))
        if key in SEGMENTATION_CHOICES:
            spec[key] = value
        elif value != spec.get(key):
            raise OptionError(
                f"--{key} {given!r} contradicts the trained model's {spec.get(key)!r} ({path}); drop the option: "
                "evaluation and inference use the model's own values."
            )
    return spec
