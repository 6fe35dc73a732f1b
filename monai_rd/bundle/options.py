"""A bundle run's options, typed and checked once: what ``python -m monai.bundle run --key value`` sets.

A bundle's ``train.json`` keeps every option as a plain top-level value a user overrides on the command line
(``--epochs 2``, ``--method kd``) and hands them, unconverted, to one of these dataclasses (its ``options``
component). Each field is converted and checked when the dataclass is built: MONAI's command line (python-fire)
passes ``--distill false`` as the *string* ``"false"``, ``--phi_hidden null`` as ``"null"`` and ``--lr 1e-3`` as
a float or a string, so every value goes through :mod:`monai_rd.utils.options`, and a value an option cannot take
stops the run before any work with a message naming the option. The recipe then reads ``@options.epochs``, never
the raw value.

The training method (``--method``) is resolved here too: its fixed values (``alpha`` for KD, ``gamma`` for
``rd_no_cka``, ...) replace the options they fix, and its defaults fill the options left unset
(:class:`monai_rd.methods.MethodSpec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai_rd.bundle.model_spec import as_class_names, model_spec, segmentation_model_spec
from monai_rd.data.checks import check_datalist
from monai_rd.data.dicom_reader import parse_window
from monai_rd.data.unlabelled import training_items, unlabelled_splits
from monai_rd.engines.drd_trainer import HYBRID_NORM
from monai_rd.errors import OptionError
from monai_rd.methods import MethodSpec, get_method_spec
from monai_rd.networks.adapted_teacher import as_lora_targets
from monai_rd.utils.constants import SPLITS
from monai_rd.utils.options import (
    as_bool,
    as_float,
    as_float_list,
    as_int,
    as_int_list,
    as_optional_float,
    as_optional_float_list,
    as_optional_int,
    as_optional_int_list,
    as_optional_str,
)

__all__ = ["ClassificationOptions", "SegmentationOptions", "TrainOptions", "as_dtype"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def as_dtype(value: Any, name: str) -> torch.dtype:
    """A torch floating-point dtype from ``torch.float16`` or its name (``"float16"``, ``"bfloat16"``, ``"float32"``).

    Raises:
        OptionError: any other value.
    """
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise OptionError(f"--{name} must be one of {list(_DTYPES)}, got {value!r}.")
    return _DTYPES[key]


@dataclasses.dataclass
class TrainOptions:
    """The options every training recipe has (classification and segmentation).

    Built from the raw values of ``train.json`` (each field's default is what the recipe sets when a bundle does
    not); ``__post_init__`` converts and checks them. See :class:`ClassificationOptions` and
    :class:`SegmentationOptions` for the recipe-specific ones.

    Raises:
        OptionError: (when built) a value an option cannot take, naming the option.
    """

    task = "classification"  # the recipe these options drive: picks the method's implementation

    class_names: Any = None
    seed: Any = 0
    amp: Any = False
    in_channels: Any = 1
    spatial_dims: Any = 2
    epochs: Any = 240
    batch_size: Any = 32
    num_workers: Any = 4
    lr: Any = 0.005
    weight_decay: Any = 0.01
    method: Any = "rd"
    distill: Any = True
    resume: Any = False
    overwrite: Any = False
    student: Any = "resnet18"
    phi_blocks: Any = 2
    phi_block: Any = "bottleneck"
    phi_hidden: Any = 128
    gamma: Any = 1.0
    tau: Any = 4.0
    alpha_start: Any = 1.0
    beta_start: Any = 1.0
    alpha_end: Any = None
    beta_end: Any = None
    detach_teacher: Any = True
    logit_standardise: Any = False
    grad_clip_norm: Any = None
    cache_teacher: Any = True
    cache_dtype: Any = "float16"
    teacher_name: Any = None
    # Deep RD (--method drd*; monai_rd.methods.DRD): the student stages distilled (null: every stage paired with a
    # teacher tap), the projectors' width (null: each stage's student channels), the cache's maps pooled to the
    # student's stage sizes, and how BatchNorm treats the hybrid passes ("batch": batch statistics, running
    # statistics left to the student's own pass; "track": updated by every pass)
    drd_stages: Any = None
    drd_hidden: Any = None
    drd_cache_pool: Any = True
    drd_hybrid_bn: Any = "batch"

    def __post_init__(self) -> None:
        self.class_names = as_class_names(self.class_names)
        self.seed = as_int(self.seed, "seed", min_value=0)
        self.amp = as_bool(self.amp, "amp")
        self.in_channels = as_int(self.in_channels, "in_channels", min_value=1)
        self.spatial_dims = as_int(self.spatial_dims, "spatial_dims", min_value=2)
        self.epochs = as_int(self.epochs, "epochs", min_value=1)
        self.num_workers = as_int(self.num_workers, "num_workers", min_value=0)
        self.lr = as_float(self.lr, "lr", positive=True)
        self.weight_decay = as_float(self.weight_decay, "weight_decay", min_value=0.0)
        self.spec: MethodSpec = get_method_spec(self.method, self.distill, self.task)
        self.method = self.spec.name
        self.distill = self.spec.uses_teacher
        self.resume = as_bool(self.resume, "resume")
        self.overwrite = as_bool(self.overwrite, "overwrite")
        self.phi_blocks = as_int(self.phi_blocks, "phi_blocks", min_value=0)
        self.phi_block = str(self.phi_block)
        self.phi_hidden = as_optional_int(self.phi_hidden, "phi_hidden", min_value=1)
        self.gamma = self.spec.option("gamma", as_float(self.gamma, "gamma", min_value=0.0))
        self.tau = self.spec.option("tau", as_float(self.tau, "tau", positive=True))
        self.alpha_start = self.spec.option("alpha", as_float(self.alpha_start, "alpha_start", min_value=0.0))
        self.beta_start = self.spec.option("beta", as_float(self.beta_start, "beta_start", min_value=0.0))
        self.alpha_end = self.spec.option("alpha", as_optional_float(self.alpha_end, "alpha_end", min_value=0.0))
        self.beta_end = self.spec.option("beta", as_optional_float(self.beta_end, "beta_end", min_value=0.0))
        self.detach_teacher = as_bool(self.detach_teacher, "detach_teacher")
        self.logit_standardise = as_bool(self.logit_standardise, "logit_standardise")
        self.grad_clip_norm = as_optional_float(self.grad_clip_norm, "grad_clip_norm", positive=True)
        self.cache_teacher = as_bool(self.cache_teacher, "cache_teacher")
        self.cache_dtype = as_dtype(self.cache_dtype, "cache_dtype")
        self.drd_stages = as_optional_int_list(self.drd_stages, "drd_stages", min_value=0)
        self.drd_hidden = as_optional_int(self.drd_hidden, "drd_hidden", min_value=1)
        self.drd_cache_pool = as_bool(self.drd_cache_pool, "drd_cache_pool")
        self.drd_hybrid_bn = str(self.drd_hybrid_bn).strip().lower()
        if self.drd_hybrid_bn not in HYBRID_NORM:
            raise OptionError(f"--drd_hybrid_bn must be one of {', '.join(HYBRID_NORM)}; got {self.drd_hybrid_bn!r}.")

    @property
    def num_classes(self) -> int:
        """Outputs of the model: one per class name (background included for segmentation)."""
        return len(self.class_names)

    @property
    def metric_class_names(self) -> list[str]:
        """The class names per-class metrics are reported for (segmentation leaves the background out)."""
        return list(self.class_names)

    def describe(self, split: str) -> dict[str, Any]:
        """What a metrics file records about the run besides its metrics."""
        return {"split": split, "method": self.method, "distill": self.distill, "student": self.student}

    @property
    def uses_teacher(self) -> bool:
        """Whether the method builds the teacher (``--method student`` and ``--distill false`` do not)."""
        return self.spec.uses_teacher

    def loss_weight_ends(self, datalist: Mapping[str, Sequence[Mapping]]) -> tuple[float, float]:
        """The end values of the alpha/beta schedule, ``--alpha_end`` and ``--beta_end``.

        Unset, each is 1.0 when unlabelled images are trained on and 0.0 otherwise. The KD term (beta) is the only
        one that learns from unlabelled images besides CKA, so decaying it to 0 would stop them counting by the end
        of the run; the task suite's measured recipe with unlabelled images holds both at 1
        (``benchmarks/results/suite/README.md``). Without unlabelled images they decay from 1 to 0.

        Args:
            datalist: the run's ``{split: [items]}``.
        """
        default = 1.0 if unlabelled_splits(datalist, self.uses_unlabelled) else 0.0
        return (
            default if self.alpha_end is None else self.alpha_end,
            default if self.beta_end is None else self.beta_end,
        )

    @property
    def uses_unlabelled(self) -> bool:
        """Whether the datalist's unlabelled images are trained on (only a method with a teacher learns from them)."""
        return False

    def training_items(self, datalist: Mapping[str, Sequence[Mapping]]) -> list[dict]:
        """The items the student trains on: the labelled training split (and, when used, the unlabelled images)."""
        return [dict(it) for it in datalist["training"]]

    def model_spec(self, bundle_root: str) -> dict[str, Any]:
        """The trained model's description (``models/model_meta.json``; :mod:`monai_rd.bundle.model_spec`)."""
        raise NotImplementedError

    def drd_fingerprint(self) -> dict[str, Any]:
        """Deep RD's settings, part of :meth:`fingerprint` for its methods (``drd``, ``drd_*``), else empty."""
        if not self.method.startswith("drd"):
            return {}
        settings = [self.drd_stages, self.drd_hidden, self.drd_cache_pool, self.drd_hybrid_bn]
        return {"method": self.method, "drd": settings}

    def fingerprint(self, epoch_length: int, training_data: str, datalist: Mapping) -> dict[str, Any]:
        """What a checkpoint must have been trained with to be resumed by this run (compared by the run folder).

        Args:
            epoch_length: iterations per epoch.
            training_data: a digest of the training items (:func:`monai_rd.handlers.data_digest`).
            datalist: the run's datalist (for the loss-weight end values).
        """
        raise NotImplementedError


@dataclasses.dataclass
class ClassificationOptions(TrainOptions):
    """The classification recipe's options (2D images, or 3D volumes with ``spatial_dims`` 3).

    Besides :class:`TrainOptions`: the input size and reading options, multi-label, the students' ImageNet
    weights, the method's own options (feature-distillation weight, direct reprogramming and teacher adaptation
    epochs, LoRA), unlabelled images and the cache's views, and the teacher-branch metrics.
    """

    teacher_name: Any = "efficientnet-lite0"
    image_size: Any = 224
    multi_label: Any = False
    distill_weight: Any = None
    direct_epochs: Any = None
    teacher_epochs: Any = None
    teacher_lr: Any = None
    lora_rank: Any = 8
    lora_alpha: Any = 16.0
    lora_targets: Any = None
    student_pretrained: Any = False
    cache_views: Any = 1
    unlabelled: Any = True
    frame: Any = None
    window: Any = "file"
    slice_axis: Any = -1
    slice_index: Any = None
    projection: Any = None
    teacher_branch_metrics: Any = True

    def __post_init__(self) -> None:
        super().__post_init__()
        spec = self.spec
        self.student = str(self.student)
        self.image_size = as_int(self.image_size, "image_size", min_value=8)
        self.batch_size = as_int(self.batch_size, "batch_size", min_value=2)
        self.multi_label = as_bool(self.multi_label, "multi_label")
        if self.logit_standardise and self.multi_label:
            raise OptionError(
                "--logit_standardise true is for single-label tasks: z-scoring per-class sigmoid logits over the "
                "classes changes which findings are present. Drop it for this multi-label bundle."
            )
        weight = as_optional_float(self.distill_weight, "distill_weight")
        if weight is not None and weight < 0:
            raise OptionError(f"--distill_weight must be at least 0, got {weight}.")
        self.distill_weight = spec.feature_weight if weight is None else weight
        direct = as_optional_int(self.direct_epochs, "direct_epochs", min_value=1)
        self.direct_epochs = (direct or self.epochs) if spec.direct else 0
        adapt = as_optional_int(self.teacher_epochs, "teacher_epochs", min_value=1)
        self.teacher_epochs = (adapt or self.epochs) if spec.adapt else 0
        lr = as_optional_float(self.teacher_lr, "teacher_lr")
        if lr is not None and lr <= 0:
            raise OptionError(f"--teacher_lr must be positive, got {lr}.")
        self.teacher_lr = spec.teacher_lr if lr is None else lr
        self.lora_rank = as_int(self.lora_rank, "lora_rank", min_value=1)
        self.lora_alpha = as_float(self.lora_alpha, "lora_alpha", positive=True)
        self.lora_targets = as_lora_targets(self.lora_targets)
        self.student_pretrained = as_bool(self.student_pretrained, "student_pretrained")
        self.cache_views = as_int(self.cache_views, "cache_views", min_value=1)
        self.unlabelled = as_bool(self.unlabelled, "unlabelled")
        self.frame = as_optional_int(self.frame, "frame")
        self.window = parse_window(self.window)
        self.slice_axis = as_int(self.slice_axis, "slice_axis")
        self.slice_index = as_optional_int(self.slice_index, "slice_index")
        self.teacher_branch_metrics = as_bool(self.teacher_branch_metrics, "teacher_branch_metrics") and spec.phi

    @property
    def uses_unlabelled(self) -> bool:  # noqa: D102 (see TrainOptions)
        return self.unlabelled and self.uses_teacher

    @property
    def reading(self) -> dict[str, Any]:
        """How files are read (:class:`monai_rd.transforms.LoadImage2D`'s options), recorded in the model's spec."""
        return {
            "frame": self.frame,
            "window": self.window,
            "slice_axis": self.slice_axis,
            "slice_index": self.slice_index,
            "projection": self.projection,
        }

    def training_items(self, datalist: Mapping[str, Sequence[Mapping]]) -> list[dict]:  # noqa: D102
        return training_items(datalist, self.uses_unlabelled, self.num_classes, multi_label=self.multi_label)

    def check_datalist(self, datalist: Mapping, loader: Any, splits: Sequence[str] = SPLITS) -> None:
        """Read every file of the datalist once and report every problem together
        (:func:`~monai_rd.data.check_datalist`).

        Args:
            datalist: the run's datalist.
            loader: the bundle's image loader (``@image_load.loader``), so files are read as training reads them.
            splits: the labelled splits to check.
        """
        check_datalist(
            datalist, self.class_names, multi_label=self.multi_label, loader=loader, splits=splits,
            unlabelled_splits=unlabelled_splits(datalist, self.uses_unlabelled),
        )

    def model_spec(self, bundle_root: str) -> dict[str, Any]:  # noqa: D102
        return model_spec(
            class_names=self.class_names, image_size=self.image_size, in_channels=self.in_channels,
            multi_label=self.multi_label, student=self.student, bundle_root=bundle_root,
            spatial_dims=self.spatial_dims, reading=self.reading, method=self.method,
        )

    def fingerprint(self, epoch_length: int, training_data: str, datalist: Mapping) -> dict[str, Any]:  # noqa: D102
        spec = self.spec
        alpha_end, beta_end = self.loss_weight_ends(datalist)
        out = dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            image_size=self.image_size,
            in_channels=self.in_channels,
            classes=list(self.class_names),
            multi_label=self.multi_label,
            student=self.student,
            distill=self.distill,
            teacher=self.teacher_name if self.distill else None,
            phi=[self.phi_blocks, self.phi_block, self.phi_hidden] if spec.phi else None,
            loss=[self.alpha_start, self.beta_start, alpha_end, beta_end, self.gamma, self.tau],
            cache=[self.cache_teacher, self.cache_views],
            epoch_length=epoch_length,
            training_data=training_data,
        )
        # methods other than rd and student record their own settings (earlier checkpoints did not: kept so)
        if self.method not in ("rd", "student"):
            out.update(method=self.method, distill_weight=self.distill_weight, direct_epochs=self.direct_epochs)
            if spec.adapt:
                adaptation = [self.teacher_epochs, self.teacher_lr]
                if spec.adapt == "lora":
                    adaptation += [self.lora_rank, self.lora_alpha, self.lora_targets]
                out["teacher_adaptation"] = adaptation
        return {**out, **self.drd_fingerprint()}


@dataclasses.dataclass
class SegmentationOptions(TrainOptions):
    """The segmentation recipe's options (2D or 3D, sliding-window validation and inference).

    Besides :class:`TrainOptions`: the window (``roi_size``), the intensity window, orientation, voxel size and
    foreground crop, the UNet's channels, strides and residual units, the teacher's input size, and CKA's voxel
    sampling.
    """

    task = "segmentation"

    spatial_dims: Any = 3
    epochs: Any = 100
    batch_size: Any = 2
    num_workers: Any = 0
    lr: Any = 0.003
    weight_decay: Any = 0.0001
    student: Any = "unet"
    phi_blocks: Any = 1
    phi_block: Any = "basic"
    phi_hidden: Any = 64
    alpha_end: Any = 0.0
    beta_end: Any = 0.0
    teacher_name: Any = "astra-i3d-r152"
    roi_size: Any = (96, 96, 96)
    intensity_range: Any = (0.0, 255.0)
    axcodes: Any = None
    pixdim: Any = None
    crop_foreground: Any = False
    student_channels: Any = (16, 32, 64, 128)
    student_strides: Any = (2, 2, 2)
    student_res_units: Any = 1
    teacher_input_size: Any = (224, 224, 160)
    cka_mode: Any = "voxels"
    cka_num_voxels: Any = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        self.student = str(self.student)
        self.batch_size = as_int(self.batch_size, "batch_size", min_value=1)
        self.crop_foreground = as_bool(self.crop_foreground, "crop_foreground")
        self.student_res_units = as_int(self.student_res_units, "student_res_units", min_value=0)
        self.roi_size = as_int_list(self.roi_size, "roi_size", length=self.spatial_dims, min_value=1)
        self.intensity_range = as_float_list(self.intensity_range, "intensity_range", length=2)
        self.axcodes = as_optional_str(self.axcodes, "axcodes")
        self.pixdim = as_optional_float_list(self.pixdim, "pixdim", length=self.spatial_dims, positive=True)
        self.student_channels = as_int_list(self.student_channels, "student_channels", min_value=1)
        self.student_strides = as_int_list(self.student_strides, "student_strides", min_value=1)
        self.teacher_input_size = as_int_list(self.teacher_input_size, "teacher_input_size", min_value=1)
        self.cka_mode = str(self.cka_mode)
        self.cka_num_voxels = as_int(self.cka_num_voxels, "cka_num_voxels", min_value=2)
        # the segmentation schedule's end values are set, not derived from unlabelled images
        if self.alpha_end is None or self.beta_end is None:
            raise OptionError("--alpha_end and --beta_end must be numbers >= 0 for segmentation (default 0).")

    @property
    def metric_class_names(self) -> list[str]:  # noqa: D102
        return list(self.class_names)[1:]

    def model_spec(self, bundle_root: str) -> dict[str, Any]:  # noqa: D102
        return segmentation_model_spec(
            bundle_root, class_names=self.class_names, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
            roi_size=self.roi_size, intensity_range=self.intensity_range, axcodes=self.axcodes, pixdim=self.pixdim,
            student=self.student, student_channels=self.student_channels, student_strides=self.student_strides,
            student_res_units=self.student_res_units, method=self.method,
        )

    def fingerprint(self, epoch_length: int, training_data: str, datalist: Mapping) -> dict[str, Any]:  # noqa: D102
        return dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
            classes=list(self.class_names),
            student=[self.student, list(self.student_channels), list(self.student_strides), self.student_res_units],
            distill=self.distill,
            teacher=[self.teacher_name, list(self.teacher_input_size)] if self.distill else None,
            phi=[self.phi_blocks, self.phi_block, self.phi_hidden] if self.distill else None,
            loss=[self.alpha_start, self.beta_start, self.alpha_end, self.beta_end, self.gamma, self.tau,
                  self.cka_mode, self.cka_num_voxels],
            cache=self.cache_teacher,
            reading=[self.axcodes, self.pixdim, self.intensity_range, self.crop_foreground],
            epoch_length=epoch_length,
            training_data=training_data,
            **self.drd_fingerprint(),
        )
