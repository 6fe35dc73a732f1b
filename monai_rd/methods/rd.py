"""Reprogramming Distillation (Zhou et al., MICCAI 2024) and its ablations, for classification and segmentation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
from ignite.engine import Events
from monai.data import DataLoader, Dataset, DistributedSampler
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, EnsureTyped

from monai_rd.data.feature_cache import CachedTeacherFeaturesd, build_cache_once
from monai_rd.engines.dense_rd_trainer import DenseRDTrainer
from monai_rd.engines.rd_trainer import RDTrainer
from monai_rd.engines.reprogramming_trainer import ReprogrammingTrainer
from monai_rd.methods.method import Method
from monai_rd.networks.reprogramming import ReprogrammingNet
from monai_rd.networks.teacher_branch import TeacherBranch
from monai_rd.utils.ranks import is_distributed

__all__ = ["RD", "DenseRD"]


class RD(Method):
    """RD: a reprogramming module Phi maps the teacher's output features into the student's feature space, the
    student's classifier is shared by both branches, KD distils the teacher branch into the student and CKA aligns
    their features (``--method rd``; the ablations fix ``alpha`` or ``gamma``, or train Phi first).

    Phi (:class:`~monai_rd.networks.ReprogrammingNet`: ``--phi_blocks``, ``--phi_block``, ``--phi_hidden``) is
    trained with the student by :class:`~monai_rd.engines.RDTrainer`. Each epoch, the teacher branch
    ``h(Phi(T(x)))`` is scored on the validation split from the teacher's features of those images, computed once
    (``--teacher_branch_metrics``), and recorded as ``teacher_branch_*`` beside the student's metrics.

    Args:
        options: the run's validated options.
        direct: direct reprogramming (``rd_direct``): before the student's first epoch, Phi and the head are
            trained alone on the teacher's features (:class:`~monai_rd.engines.ReprogrammingTrainer`,
            ``--direct_epochs``), then frozen; the student then distils the fixed reprogrammed teacher.
        components: :class:`~monai_rd.methods.Method`'s.
    """

    uses_teacher: ClassVar[bool] = True
    has_phi: ClassVar[bool] = True
    trainer_class = RDTrainer

    def __init__(self, options: Any, direct: bool = False, **components: Any) -> None:
        super().__init__(options, **components)
        self.direct = direct
        self.reprogrammer: nn.Module | None = None
        self.branch_cache: Any | None = None

    def build_parts(self) -> None:
        """Phi, right after the student; with direct reprogramming Phi and the head start frozen, so a resumed run
        (which skips the direct stage: the checkpoint holds them fitted) never trains them."""
        self.reprogrammer = self.build_reprogrammer().to(self.device)
        if self.direct:
            for p in [*self.reprogrammer.parameters(), *self.student.head.parameters()]:
                p.requires_grad_(False)

    def build_reprogrammer(self) -> nn.Module:
        """Phi: the teacher's feature map to the student's pooled feature width."""
        o = self.options
        return ReprogrammingNet(
            in_channels=self.teacher.out_channels,
            out_features=self.student.num_features,
            num_blocks=o.phi_blocks,
            spatial_dims=o.spatial_dims,
            block=o.phi_block,
            hidden_channels=o.phi_hidden,
        )

    def trainable_parts(self) -> dict[str, nn.Module]:  # noqa: D102
        return {"reprogrammer": self.reprogrammer}

    def trainer_kwargs(self) -> dict[str, Any]:  # noqa: D102
        return {**super().trainer_kwargs(), "reprogrammer": self.reprogrammer}

    def prepare(
        self, datalist: Mapping[str, Sequence[Mapping]], base: Sequence[Callable], augmentation: Sequence
    ) -> None:
        """The training cache, then the validation images' teacher features for the teacher-branch metrics."""
        super().prepare(datalist, base, augmentation)
        if getattr(self.options, "teacher_branch_metrics", False):
            # in memory (never --cache_dir): the validation split is small and read every epoch
            self.branch_cache = self.make_cache(Compose(list(base)), cache_dir=None)
            build_cache_once(self.branch_cache, datalist["validation"])

    def branch_evaluator(self, postprocessing: Callable, metrics: Mapping[str, Mapping]) -> Any | None:
        """The teacher branch ``h(Phi(T(x)))`` on the validation split's cached features (None when not scored).

        It holds the training's Phi and head (no copies), so it scores the current ones; its loader has its own
        random generator, so scoring it draws nothing from the training's random streams.
        """
        if self.branch_cache is None:
            return None
        o = self.options
        to_tensors = [EnsureTyped(keys="image", dtype=torch.float32, track_meta=False)]
        if o.multi_label:
            to_tensors.append(EnsureTyped(keys="label", dtype=torch.float32, track_meta=False))
        lookup = CachedTeacherFeaturesd(keys="image", cache=self.branch_cache, feature_key="image")
        dataset = Dataset(self.datalist["validation"], transform=Compose([lookup, *to_tensors]))
        sampler = DistributedSampler(dataset, even_divisible=False, shuffle=False) if is_distributed() else None
        loader = DataLoader(
            dataset, batch_size=o.batch_size, shuffle=False, num_workers=0, sampler=sampler,
            generator=torch.Generator(),  # a DataLoader draws a seed from (and MONAI's resets) the global one
        )
        return SupervisedEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=TeacherBranch(self.reprogrammer, self.student.head),
            postprocessing=postprocessing,
            key_val_metric=copy.deepcopy(dict(metrics["key"])),
            additional_metrics=copy.deepcopy(dict(metrics["additional"])),
            amp=o.amp,
        )

    def trainer(self, **kwargs: Any) -> RDTrainer:
        """RD's trainer; with direct reprogramming, its first epoch starts with the direct stage."""
        trainer = super().trainer(**kwargs)
        if self.direct:
            trainer.add_event_handler(Events.EPOCH_STARTED, self._direct_stage)
        return trainer

    def _direct_stage(self, trainer: RDTrainer) -> None:
        if trainer.state.epoch != 1:  # a run resumed from a checkpoint has the fitted Phi and head already
            return
        o = self.options
        params = [*self.reprogrammer.parameters(), *self.student.head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        stage = ReprogrammingTrainer(
            device=trainer.state.device,
            max_epochs=o.direct_epochs,
            train_data_loader=trainer.data_loader,
            reprogrammer=self.reprogrammer,
            network=self.student,
            optimizer=optimizer,
            loss_function=self.loss.supervised,
            features=trainer.features,
            lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.direct_epochs),
            prepare_batch=trainer.prepare_batch,
        )
        stage.run()


class DenseRD(RD):
    """RD for segmentation ("dense RD"): a dense Phi maps the teacher's feature map onto the student's last decoder
    map (resampled to its size), the student's 1x1 head is shared by both branches, KD is voxel-wise and CKA is on
    sampled voxels (:class:`~monai_rd.losses.DenseRDLoss`, :class:`~monai_rd.engines.DenseRDTrainer`).
    """

    trainer_class = DenseRDTrainer

    def build_reprogrammer(self) -> nn.Module:  # noqa: D102
        o = self.options
        return ReprogrammingNet(
            in_channels=self.teacher.out_channels,
            out_features=self.student.feature_channels,
            num_blocks=o.phi_blocks,
            spatial_dims=o.spatial_dims,
            block=o.phi_block,
            hidden_channels=o.phi_hidden,
            dense=True,
        )
