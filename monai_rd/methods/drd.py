"""Deep Reprogramming Distillation (Du et al., arXiv 2605.04447) and its ablations, for classification and
segmentation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
from monai.transforms import Compose, EnsureTyped

from monai_rd.data.feature_cache import build_cache_once, normalise_path
from monai_rd.engines.drd_trainer import DenseDRDTrainer, DRDTrainer, drd_loss_keys
from monai_rd.errors import OptionError
from monai_rd.methods.method import Method
from monai_rd.networks.stage_map_teacher import StageMapTeacher
from monai_rd.networks.stage_projector import build_stage_projectors

__all__ = ["DRD", "DenseDRD"]

logger = logging.getLogger(__name__)


class DRD(Method):
    """DRD: teacher and student cut into N stages; each teacher stage map, reprogrammed to the student's stage shape
    by a projector phi_i, runs through the student's own later stages and head (the hybrid logits z_i), trained with
    the task loss, tied to the student's logits by a KL and to its stage map by CKA (``--method drd``):

    ``L = L_sup(z_S) + alpha sum_i L_sup(z_i) + beta sum_i KL(z_i, z_S) + gamma sum_i (1 - CKA(phi_i(f_i^T), s_i))``

    (:class:`~monai_rd.losses.DRDLoss`; ``alpha`` and ``beta`` decay linearly from ``--alpha_start``/``--beta_start``
    as in RD, ``--detach_teacher`` detaches the hybrid logits in the KL). RD is DRD's last-stage case
    (``drd_last``). Only the student is deployed: its ``forward`` and weights format are those of every method.

    Stages: the student's stages (:meth:`~monai_rd.networks.StudentClassifier.stage_names`) are paired with the
    teacher's stage taps (:attr:`~monai_rd.networks.FrozenTeacher.stage_names`; other taps with
    ``--teacher#stages "['layer1', ...]"``) deepest first: with N_S student stages and N_T taps, the last
    ``min(N_S, N_T)`` of each. ``--drd_stages`` picks student stages (0-based) among the paired ones (default all);
    only the teacher taps they need are computed and cached.

    Parts, built by :meth:`deploy` right after the student (in this order, from the random stream it leaves): the
    projectors phi_i (:func:`~monai_rd.networks.build_stage_projectors`; shapes from the student's
    ``stage_shapes`` at the training input size and the teacher's ``stage_channels``; width ``--drd_hidden``,
    default each stage's student channels), checkpointed as ``projectors``; then the stage-map cache.

    Cache (``--cache_teacher``, the default): the teacher's stage maps of every training image, packed into one row
    by a :class:`~monai_rd.networks.stage_map_teacher.StageMapTeacher` and stored by the recipe's
    :class:`~monai_rd.data.TeacherFeatureCache` (in memory, or memory-mapped under ``cache_dir``), keyed by the
    teacher's stage fingerprint, the selected taps and the stored shapes. With ``--drd_cache_pool`` (default) each
    map is pooled to the student's stage size first (what phi_i's own first step does, so phi_i computes the same
    maps; see StageMapTeacher for what it trades). The cache is built when the student exists (its stage sizes
    are the pooled sizes), so the trainer finds a batch's rows by its source paths, and one view per image is
    cached (``--cache_views`` must be 1: a random spatial augmentation of the student's image is then not seen by
    the cached maps; ``--cache_teacher false`` runs the teacher on every augmented batch). Its size is logged
    before it is built.

    BatchNorm (``--drd_hybrid_bn``): ``batch`` (default) normalises the hybrid passes with their own batch
    statistics and leaves the running statistics to the student's own pass, so the deployed student's statistics
    are those of its own features; ``track`` lets every hybrid pass update them too
    (:class:`~monai_rd.engines.DRDTrainer`).

    Args:
        options: the run's validated options.
        stages: ``"last"`` (``drd_last``) fixes the stages to the student's last; None uses ``--drd_stages``.
        hybrid: run the hybrid paths; False (``drd_no_hybrid``) keeps the supervised term and the stages' CKA.
        components: :class:`~monai_rd.methods.Method`'s.

    Raises:
        OptionError: ``--drd_stages`` with a method that fixes the stages, ``--cache_views`` above 1 with the cache,
            or ``drd_no_hybrid`` with ``--gamma 0`` (nothing left to distil).
    """

    uses_teacher: ClassVar[bool] = True
    trainer_class = DRDTrainer

    def __init__(self, options: Any, stages: str | None = None, hybrid: bool = True, **components: Any) -> None:
        super().__init__(options, **components)
        o = options
        if stages is not None and o.drd_stages is not None:
            raise OptionError(f"--method {o.method} uses the student's {stages} stage; drop --drd_stages.")
        if self.uses_cache and self.cache_views > 1:
            raise OptionError(
                f"--method {o.method} caches one view of each image (--cache_views 1); for augmented teacher maps "
                "use --cache_teacher false (the teacher runs on every batch)."
            )
        if not hybrid and o.gamma == 0:
            raise OptionError(f"--method {o.method} distils through the stages' CKA alone; --gamma 0 leaves nothing.")
        self.requested_stages: str | Sequence[int] | None = stages if stages is not None else o.drd_stages
        self.hybrid = hybrid
        self.base: list[Callable] = []
        self.projectors: nn.ModuleList | None = None
        self.levels: tuple[int, ...] = ()
        self.stages: tuple[int, ...] = ()

    # Method.build_loss builds DRDLoss / DenseDRDLoss; --detach_teacher detaches the hybrid logits in the KL
    loss_names: ClassVar[tuple[str, str]] = ("DRDLoss", "DenseDRDLoss")
    detach_option: ClassVar[str] = "detach_hybrid"

    # ---------------------------------------------------------------------------------------------- stages
    def prepare(
        self, datalist: Mapping[str, Sequence[Mapping]], base: Sequence[Callable], augmentation: Sequence
    ) -> None:
        """The teacher (right after the seed), checked for stage taps; the cache waits for the student."""
        self.datalist, self.base = datalist, list(base)
        self.teacher = self.make_teacher()
        self.teacher.stage_names  # noqa: B018 - a teacher without taps stops the run here, saying what to do

    def select_stages(self, num_student: int, num_teacher: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """The student stages with DRD terms, the levels that get a projector, and the first paired stage.

        Args:
            num_student: the student's stages N_S.
            num_teacher: the teacher's taps N_T.

        Returns:
            ``(stages, levels, first)``: student stages 0-based; ``first`` is the first student stage with a teacher
            tap (``N_S - min(N_S, N_T)``).

        Raises:
            OptionError: a stage out of range or without a teacher tap.
        """
        first = num_student - min(num_student, num_teacher)
        paired = list(range(first, num_student))
        req = self.requested_stages
        stages = paired if req is None else [num_student - 1] if req == "last" else sorted(set(int(i) for i in req))
        bad = [i for i in stages if i not in paired]
        if bad or not stages:
            raise OptionError(
                f"--drd_stages {list(stages)}: the student has {num_student} stages {list(self.student.stage_names)} "
                f"and the teacher {num_teacher} taps {list(self.teacher.stage_names)}, paired deepest first, so "
                f"stages {paired} can be distilled; choose among them (more teacher taps: --teacher#stages)."
            )
        return tuple(stages), tuple(stages), first

    def reference_size(self) -> list[int]:
        """The training input's spatial size, at which the student's stage shapes are taken."""
        return [self.options.image_size] * self.options.spatial_dims

    def build_parts(self) -> None:
        """Pair the stages, select the teacher's taps, build the projectors (right after the student), wrap the
        teacher to pack its stage maps, then build the stage-map cache."""
        o, student = self.options, self.student
        taps = self.teacher.stage_names
        self.stages, self.levels, _ = self.select_stages(len(student.stage_names), len(taps))
        offset = len(taps) - len(student.stage_names)  # paired deepest first: student stage i is tap i + offset
        self.teacher.select_stages([taps[i + offset] for i in self.levels])
        shapes = student.stage_shapes(self.reference_size())
        self.projectors = build_stage_projectors(
            self.teacher.stage_channels,
            [shapes[i][0] for i in self.levels],
            spatial_dims=o.spatial_dims,
            hidden_channels=o.drd_hidden,
            out_sizes=[shapes[i][1:] for i in self.levels],
        ).to(self.device)
        self.teacher = StageMapTeacher(self.teacher, [shapes[i][1:] for i in self.levels] if o.drd_cache_pool else None)
        if self.uses_cache:
            self.cache = self.make_cache(Compose(self.base))
            items = self.options.training_items(self.datalist)
            self.log_cache_size(len({normalise_path(str(it["image"])) for it in items}))
            build_cache_once(self.cache, items)

    def log_cache_size(self, num_images: int) -> None:
        """Log what the stage-map cache will hold, before it is built: bytes per image and in all, and where."""
        packer: StageMapTeacher = self.teacher  # type: ignore[assignment]
        per_image = packer.numel * torch.empty((), dtype=self.cache.dtype).element_size()
        where = "in memory (RAM)" if self.cache.in_memory else f"on disk, memory-mapped, in {self.cache.cache_dir}"
        logger.info(
            "DRD stage-map cache: %d images x %.1f KiB (%d values in %s: taps %s, shapes %s%s) = %.1f MiB %s; "
            "building it now.",
            num_images, per_image / 2**10, packer.numel, self.cache.dtype, list(packer.stage_names),
            [list(s) for s in packer.stage_shapes], ", pooled to the student's stage sizes" if packer.pooled else "",
            num_images * per_image / 2**20, where,
        )

    # --------------------------------------------------------------------------------------------- training
    def trainable_parts(self) -> dict[str, nn.Module]:  # noqa: D102
        return {"projectors": self.projectors}

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """``loss``, the sums of the terms, and each distilled stage's terms (known once the student is deployed)."""
        return ("loss", *drd_loss_keys(self.stages, self.hybrid))

    def train_transforms(self, base: Sequence[Callable], augmentation: Sequence[Callable]) -> Compose:
        """The base transforms, tensors and the augmentation: no cache lookup (the trainer finds the rows by the
        batch's source paths, the cache being built after the student)."""
        keys = "image" if self.options.task == "classification" else ["image", "label"]
        return Compose([*base, EnsureTyped(keys=keys, track_meta=False), *augmentation])

    def trainer_kwargs(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().trainer_kwargs(),
            "projectors": self.projectors,
            "levels": self.levels,
            "stages": self.stages,
            "hybrid": self.hybrid,
            "hybrid_norm": self.options.drd_hybrid_bn,
        }


class DenseDRD(DRD):
    """DRD for segmentation (2D or 3D): the stages are the student's encoder levels
    (:meth:`~monai_rd.networks.SegmentationStudent.stage_names`), the loss is
    :class:`~monai_rd.losses.DenseDRDLoss` and the trainer :class:`~monai_rd.engines.DenseDRDTrainer`.

    A UNet hybrid path of level i runs the rest of the network from the maps of levels 0..i: the skips of levels
    <= i come from the projected teacher maps phi_0(f_0^T) .. phi_i(f_i^T), the deeper levels from the student's
    own encoder on phi_i(f_i^T), then the whole decoder. So every level from 0 to the deepest distilled one gets a
    projector and a teacher tap (with ``drd_last``, all of them: one hybrid path, every skip from the teacher),
    while the loss terms are those of the distilled levels; a student with more levels than the teacher has taps
    needs more taps (``--teacher#stages``). Without hybrid paths (``drd_no_hybrid``) only the distilled levels
    get projectors.

    The stage shapes are taken at the size of the first training image after the base transforms (training runs on
    whole images); images of another size are served maps pooled to that size, which phi_i then resamples.
    """

    trainer_class = DenseDRDTrainer

    def select_stages(self, num_student: int, num_teacher: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """As :meth:`DRD.select_stages`, with hybrid paths every level up to the deepest distilled one projected.

        Raises:
            OptionError: as DRD's, or a hybrid path whose shallow levels have no teacher tap.
        """
        stages, levels, first = super().select_stages(num_student, num_teacher)
        if self.hybrid:
            if first > 0:
                raise OptionError(
                    f"the student has {num_student} encoder levels and the teacher {num_teacher} stage taps; a hybrid "
                    "path takes every shallower skip from the teacher, so give the teacher one tap per level "
                    f"(--teacher#stages with {num_student} names)."
                )
            levels = tuple(range(max(stages) + 1))
        return stages, levels, first

    def reference_size(self) -> list[int]:  # noqa: D102
        items = self.options.training_items(self.datalist)
        return list(Compose(self.base)(dict(items[0]))["image"].shape[1:])
