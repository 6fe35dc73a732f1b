"""Deep Reprogramming Distillation's trainers: the teacher's stage maps reprogrammed into the student's own stages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai_rd.engines.distillation_trainer import DistillationTrainer
from monai_rd.losses.drd import DenseDRDLoss, DRDLoss

__all__ = ["HYBRID_NORM", "DRDTrainer", "DenseDRDTrainer", "batch_statistics_only", "drd_loss_keys"]

#: how BatchNorm layers treat the hybrid passes (see :class:`DRDTrainer`)
HYBRID_NORM = ("batch", "track")


def drd_loss_keys(stages: Sequence[int], hybrid: bool = True) -> tuple[str, ...]:
    """The terms a DRD step logs besides ``loss``: the sums, then each stage's own terms.

    Args:
        stages: the student stages with DRD terms (0-based).
        hybrid: whether hybrid paths run (else only the stages' CKA terms).

    Returns:
        ``ce_student``, ``ce_hybrid``, ``kd``, ``cka``, then per stage ``ce_hybrid_stage<i>`` and ``kd_stage<i>``
        (with hybrid paths) and ``cka_stage<i>``.
    """
    per_stage = ("ce_hybrid", "kd", "cka") if hybrid else ("cka",)
    return ("ce_student", "ce_hybrid", "kd", "cka", *(f"{t}_stage{i}" for i in stages for t in per_stage))


@contextlib.contextmanager
def batch_statistics_only(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` in train mode normalise with the batch's statistics and
    leave their running statistics (and ``num_batches_tracked``) untouched.

    PyTorch's ``_BatchNorm`` (SyncBatchNorm included) passes no running buffers to the kernel when
    ``track_running_stats`` is False in train mode, so the forward and its gradient are those of train mode and
    only the buffer update is skipped. Other layers (InstanceNorm, GroupNorm) keep no running statistics.

    Args:
        module: e.g. the student.
    """
    layers = [
        m for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


class DRDTrainer(DistillationTrainer):
    """Trains a classification student and the stage projectors phi_i against a frozen teacher's stage maps (Deep
    RD, Du et al., arXiv 2605.04447).

    Each iteration:

    1. the teacher's stage maps without grad: packed rows of a stage-map cache (found by the batch's source paths,
       ``source_key``, or by cache rows the batch carries), precomputed packed maps, or the live teacher, which must
       be a :class:`~monai_rd.networks.stage_map_teacher.StageMapTeacher` (its ``unpack`` turns rows into maps);
    2. the student's own pass: its stage maps ``s_1 .. s_N`` (``forward_stages``), its features and logits z_S;
    3. ``phi_i(f_i^T)``, each teacher map projected to the shape of the student's map of its stage (``levels``);
    4. for each stage i of ``stages``, the hybrid logits ``z_i``: ``phi_i(f_i^T)`` through the student's stages
       after i and its head (``forward_from``);
    5. the :class:`~monai_rd.losses.DRDLoss` terms ``L_sup(z_S) + alpha sum_i L_sup(z_i) + beta sum_i KL(z_i, z_S)
       + gamma sum_i (1 - CKA(phi_i(f_i^T), s_i))``, then backward and the optimizer step, guarded as
       :class:`~monai_rd.engines.DistillationTrainer` does.

    Gradients: ``L_sup(z_i)`` reaches phi_i, the student's stages after i and its head, never its stages up to i
    (they are not run on the hybrid path); the stage-i CKA reaches phi_i and the student's stages up to i; the KL
    reaches the student's own path, and with ``detach_hybrid=False`` (the loss's) also the hybrid path. The teacher
    is frozen and its maps enter only through phi_i, so it never receives a gradient.

    BatchNorm and the hybrid passes (``hybrid_norm``): the deployed student normalises with running statistics
    that should describe its own activations on images. A hybrid pass runs the student's later stages on
    reprogrammed *teacher* maps, whose statistics differ (CKA and the KL align them only loosely), so by default
    (``"batch"``) hybrid passes normalise with their own batch's statistics, as train mode does, but leave the
    running statistics alone (:func:`batch_statistics_only`): after a step they are exactly those of the student's
    own pass, and the student's eval-mode outputs do not drift with the number of stages. ``"track"`` runs them in
    plain train mode (every hybrid batch also moves the running averages, as a straightforward implementation
    does). Norms without running statistics (InstanceNorm, GroupNorm) are unaffected either way.

    ``engine.state.output`` holds ``pred`` (z_S), ``loss`` and each of :attr:`loss_keys` (:func:`drd_loss_keys`:
    the sums and each stage's ``ce_hybrid_stage<i>``, ``kd_stage<i>``, ``cka_stage<i>``), ``alpha`` and ``beta``.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image``, ``label`` and the source path under ``source_key``.
        network: the deployable student (a :class:`~monai_rd.networks.StudentClassifier`: ``forward_stages``,
            ``forward_from``, ``classify``).
        optimizer: optimizer over the student's and the projectors' parameters.
        loss_function: a :class:`~monai_rd.losses.DRDLoss`.
        projectors: phi per entry of ``levels`` (:func:`~monai_rd.networks.build_stage_projectors`), in the order of
            the teacher's stage maps.
        levels: the student stage (0-based) each projector maps to, increasing; the teacher's maps come in this
            order.
        stages: the stages with DRD terms (a subset of ``levels``; default all of them).
        hybrid: run the hybrid paths; False keeps only the stages' CKA terms (the ``drd_no_hybrid`` ablation).
        hybrid_norm: ``"batch"`` or ``"track"``, see above.
        teacher: the frozen :class:`~monai_rd.networks.stage_map_teacher.StageMapTeacher` (required: it also
            unpacks the cached rows; it runs only for batches no cache serves).
        kwargs: the other :class:`~monai_rd.engines.DistillationTrainer` arguments (``feature_cache``,
            ``source_key``, ``grad_clip_norm``, ``amp``, ``train_handlers``, ...).

    Raises:
        ValueError: the loss is not a DRDLoss (or DenseDRDLoss for :class:`DenseDRDTrainer`), the teacher cannot
            unpack stage maps, the projectors do not match ``levels``, ``stages`` not in ``levels``, an unknown
            ``hybrid_norm``, or any of DistillationTrainer's checks.
    """

    uses_teacher_features = True
    loss_type: type[nn.Module] = DRDLoss

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DRDLoss,
        projectors: nn.ModuleList,
        levels: Sequence[int],
        stages: Sequence[int] | None = None,
        hybrid: bool = True,
        hybrid_norm: str = "batch",
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_function, self.loss_type):
            raise ValueError(
                f"{type(self).__name__}'s loss_function must be a monai_rd.losses.{self.loss_type.__name__}, got "
                f"{type(loss_function).__name__}."
            )
        if not callable(getattr(teacher, "unpack", None)):
            raise ValueError(
                f"{type(self).__name__} needs the teacher's stage maps packed: wrap the teacher in "
                f"monai_rd.networks.stage_map_teacher.StageMapTeacher (got {type(teacher).__name__})."
            )
        self.levels = tuple(int(i) for i in levels)
        self.stages = tuple(int(i) for i in (self.levels if stages is None else stages))
        if len(projectors) != len(self.levels) or list(self.levels) != sorted(set(self.levels)):
            raise ValueError(
                f"one projector per level, levels increasing: {len(projectors)} projectors for levels {self.levels}."
            )
        if not self.stages or set(self.stages) - set(self.levels):
            raise ValueError(f"stages {self.stages} must be some of the projected levels {self.levels}.")
        if hybrid_norm not in HYBRID_NORM:
            raise ValueError(f"hybrid_norm must be one of {HYBRID_NORM}, got {hybrid_norm!r}.")
        self.hybrid = bool(hybrid)
        self.hybrid_norm = hybrid_norm
        self.loss_keys = drd_loss_keys(self.stages, self.hybrid)  # before the guard (base __init__) reads them
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            teacher=teacher,
            trainable={"projectors": projectors},
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------ teacher maps
    def teacher_features(self, batchdata: Mapping, inputs: torch.Tensor) -> torch.Tensor | None:
        """The batch's packed teacher stage maps, without grad.

        A stage-map cache is built after the student (its pooled shapes are the student's stage shapes), so the
        training transforms, run before, cannot carry its rows: a batch without rows is looked up by its source
        paths (``source_key``). Otherwise as :class:`~monai_rd.engines.TeacherFeatureSource`.
        """
        cache = self.feature_cache
        has_rows = isinstance(batchdata, Mapping) and self.features.teacher_index_key in batchdata
        if cache is not None and not has_rows and isinstance(batchdata, Mapping) and self.source_key in batchdata:
            paths = batchdata[self.source_key]
            rows = [cache.index(str(p)) for p in ([paths] if isinstance(paths, str) else paths)]
            return cache.gather(rows, self.state.device)
        return super().teacher_features(batchdata, inputs)

    def teacher_maps(self, feats_t: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's stage maps (one per level) from packed rows."""
        return self.teacher.unpack(feats_t)  # type: ignore[union-attr]

    # ----------------------------------------------------------------------------------------------- paths
    def student_features(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The student's own features from its stage maps: what ``forward_features`` computes."""
        return self.network.forward_from(len(maps) - 1, maps[-1])

    def hybrid_features(self, i: int, projected: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The features of hybrid path i: phi_i(f_i^T) through the student's stages after i."""
        return self.network.forward_from(i, projected[i])

    def _hybrid_norm(self) -> contextlib.AbstractContextManager:
        return batch_statistics_only(self.network) if self.hybrid_norm == "batch" else contextlib.nullcontext()

    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> dict[str, Any]:
        """The student's own pass, and with teacher maps the projections and the hybrid passes.

        Returns:
            ``student_features``, ``student_logits``; with teacher maps also ``student_stage_maps`` and
            ``projected_maps`` (lists over ``stages``) and, with hybrid paths, ``hybrid_logits``.
        """
        maps_s = self.network.forward_stages(inputs)
        z_s = self.student_features(maps_s)
        out: dict[str, Any] = {"student_features": z_s, "student_logits": self.network.classify(z_s)}
        if feats_t is None:
            return out
        projected = {
            level: phi(f, out_size=tuple(maps_s[level].shape[2:]))
            for level, phi, f in zip(self.levels, self.projectors, self.teacher_maps(feats_t))
        }
        out["student_stage_maps"] = [maps_s[i] for i in self.stages]
        out["projected_maps"] = [projected[i] for i in self.stages]
        if self.hybrid:
            with self._hybrid_norm():
                out["hybrid_logits"] = [self.network.classify(self.hybrid_features(i, projected)) for i in self.stages]
        return out

    def loss_terms(self, out: Mapping[str, Any], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DRD loss, with each stage's terms named by the student's stage index."""
        loss = self.loss_function
        if "projected_maps" not in out:  # a batch without teacher maps: the student's supervised term alone
            return dict(loss(out["student_logits"], targets))
        if not self.hybrid:
            terms = dict(loss(out["student_logits"], targets))
            for i, t, s in zip(self.stages, out["projected_maps"], out["student_stage_maps"]):
                cka_i = loss.cka_term(t, s) if loss.gamma != 0 else terms["cka"].new_zeros(())
                terms[f"cka_stage{i}"], terms["cka"] = cka_i, terms["cka"] + cka_i
            terms["loss"] = terms["loss"] + loss.gamma * terms["cka"]
            return terms
        terms = dict(
            loss(out["student_logits"], targets, out["hybrid_logits"], out["student_stage_maps"], out["projected_maps"])
        )
        # the loss numbers the stages it is given 0..k-1; the logs name the student's stages
        kinds = ("ce_hybrid", "kd", "cka")
        names = {f"{t}_stage{j}": f"{t}_stage{i}" for j, i in enumerate(self.stages) for t in kinds}
        return {names.get(k, k): v for k, v in terms.items()}


class DenseDRDTrainer(DRDTrainer):
    """:class:`DRDTrainer` for a segmentation student (2D or 3D): the stages are its encoder levels.

    The hybrid path of level i runs the rest of the network from the maps of levels 0..i
    (:meth:`~monai_rd.networks.SegmentationStudent.forward_from`): the skip connections of levels <= i come from
    the projected teacher maps phi_0(f_0^T) .. phi_i(f_i^T), the deeper levels are the student's own encoder run
    on phi_i(f_i^T), then the whole decoder and the head. So with hybrid paths, ``levels`` must hold every level
    from 0 to the deepest of ``stages`` (a projector each), and ``L_sup(z_i)`` also reaches phi_0 .. phi_(i-1).
    The loss is a :class:`~monai_rd.losses.DenseDRDLoss` (Dice+CE per path, voxel-wise KL, CKA on sampled voxels).

    Args:
        kwargs: :class:`DRDTrainer`'s, with a :class:`~monai_rd.networks.SegmentationStudent` as ``network`` and a
            DenseDRDLoss as ``loss_function``.

    Raises:
        ValueError: as :class:`DRDTrainer`, or a hybrid path whose shallower levels have no projector.
    """

    loss_type = DenseDRDLoss

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.hybrid and list(self.levels[: max(self.stages) + 1]) != list(range(max(self.stages) + 1)):
            raise ValueError(
                f"a segmentation hybrid path of level i takes the skips of levels 0..i from the projected teacher "
                f"maps: levels {self.levels} must include 0..{max(self.stages)} for the stages {self.stages}."
            )

    def student_features(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        return self.network.forward_from(len(maps) - 1, maps)

    def hybrid_features(self, i: int, projected: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The last decoder map of hybrid path i, from phi_0(f_0^T) .. phi_i(f_i^T)."""
        return self.network.forward_from(i, [projected[k] for k in range(i + 1)])
