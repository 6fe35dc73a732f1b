"""Logit distillation from the teacher's own head: its linear probe, or the head of an adapted teacher."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch.nn as nn
from monai.transforms import Compose

from monai_rd.data.feature_cache import build_cache_once
from monai_rd.engines.kd_trainer import KDTrainer
from monai_rd.engines.teacher_adaptation import adapt_teacher
from monai_rd.handlers.loss_weight_schedule import LinearLossWeight
from monai_rd.losses.decoupled_kd import DecoupledKDLoss
from monai_rd.losses.dist_kd import DISTLoss
from monai_rd.methods.method import Method
from monai_rd.networks.adapted_teacher import AdaptedTeacherClassifier
from monai_rd.networks.linear_probe import LinearProbe, fit_teacher_probe

__all__ = ["KD", "TeacherHeadMethod"]


class TeacherHeadMethod(Method):
    """A method that gives the frozen teacher a classification head of its own before the student trains.

    The head is the teacher's linear probe (:class:`~monai_rd.networks.linear_probe.LinearProbe`), fitted on the
    teacher's pooled features of the training split with its weight decay chosen on the validation split. With
    ``adapt`` the teacher is first adapted with that head, end to end (``finetune``: every teacher weight;
    ``lora``: LoRA adapters from HF ``peft``), by :func:`~monai_rd.engines.adapt_teacher` (AdamW and cosine over
    ``--teacher_epochs`` at ``--teacher_lr``, the epoch with the best validation loss kept, the probe alone
    counting as epoch 0), then frozen again; everything after it (the feature cache, the student's training) sees
    the adapted teacher.

    Args:
        options: the run's validated options.
        adapt: ``"finetune"``, ``"lora"`` or None.
        components: :class:`~monai_rd.methods.Method`'s.
    """

    uses_teacher: ClassVar[bool] = True

    def __init__(self, options: Any, adapt: str | None = None, **components: Any) -> None:
        super().__init__(options, **components)
        self.adapt = adapt
        self.probe: LinearProbe | None = None
        self.classifier: AdaptedTeacherClassifier | None = None

    def make_teacher(self) -> nn.Module:
        """The teacher, its probe, and with ``adapt`` the adaptable classifier (LoRA adapters injected)."""
        teacher = super().make_teacher()
        o = self.options
        self.probe = LinearProbe(teacher.out_channels, o.num_classes, multi_label=o.multi_label)
        if self.adapt:
            self.classifier = AdaptedTeacherClassifier(
                teacher, self.probe, mode=self.adapt, lora_rank=o.lora_rank, lora_alpha=o.lora_alpha,
                lora_targets=o.lora_targets,
            )
        return teacher

    def prepare(
        self, datalist: Mapping[str, Sequence[Mapping]], base: Sequence[Callable], augmentation: Sequence
    ) -> None:
        """Build the teacher and its head, adapt them (with ``adapt``), build the feature cache, then fit the probe
        (without ``adapt``)."""
        o = self.options
        self.datalist = datalist
        self.teacher = self.make_teacher()
        if self.classifier is not None:
            adapt_teacher(
                self.classifier, datalist, Compose(list(base)), augmentation, epochs=o.teacher_epochs, lr=o.teacher_lr,
                weight_decay=o.weight_decay, batch_size=o.batch_size, num_workers=o.num_workers, device=self.device,
                amp=o.amp,
            )
        if self.uses_cache:
            self.cache = self.make_cache(Compose(list(base)), **self.cache_views_kwargs(augmentation))
            build_cache_once(self.cache, o.training_items(datalist))
        if self.classifier is None:
            fit_teacher_probe(self.probe, self.teacher, datalist, Compose(list(base)), self.cache, self.device)


class KD(TeacherHeadMethod):
    """Logit distillation from the teacher's head: ``--method kd`` (Hinton et al. 2015) distils its linear probe,
    ``lora_kd`` the head of the LoRA-adapted teacher (the PEFT + KD baseline), ``dkd`` and ``dist`` the probe with
    today's strongest logit losses. The student learns from the head's logits on the teacher's (cached) features
    with :class:`~monai_rd.engines.KDTrainer`; the loss is :class:`~monai_rd.losses.RDLoss` with no Phi (alpha
    fixed at 0, no CKA): CE plus beta times the KD term, beta on the recipe's schedule as for every method.

    The KD term (``kd_loss``):

    - ``"kl"``: Hinton's KL at temperature ``--tau``, times tau² (``--logit_standardise``: on z-scored logits,
      Sun et al. 2024);
    - ``"dkd"``: decoupled KD (Zhao et al., CVPR 2022; :class:`~monai_rd.losses.DecoupledKDLoss`): target-class and
      non-target-class KD weighted 1 and 8 at ``--tau`` (4), the authors' CIFAR defaults, ramped in by a warm-up
      factor going linearly from 0 to 1 over the first twelfth of the run (their 20 of 240 epochs);
      ``--logit_standardise`` applies too;
    - ``"dist"``: DIST (Huang et al., NeurIPS 2022; :class:`~monai_rd.losses.DISTLoss`): Pearson correlation of the
      predictions within each sample and across the batch, weights 1 and 1 at temperature 1 (the method fixes
      ``tau``).

    Args:
        options: the run's validated options.
        kd_loss: ``"kl"``, ``"dkd"`` or ``"dist"``.
        components: :class:`TeacherHeadMethod`'s.
    """

    trainer_class = KDTrainer

    def __init__(self, options: Any, kd_loss: str = "kl", **components: Any) -> None:
        self.kd_loss = kd_loss
        super().__init__(options, **components)

    def build_loss(self) -> nn.Module:
        """RDLoss (no Phi: alpha is fixed at 0) whose KD term is the method's."""
        loss = super().build_loss()
        o = self.options
        if self.kd_loss == "dkd":
            loss.kd = DecoupledKDLoss(
                tau=o.tau, detach_teacher=o.detach_teacher, multi_label=o.multi_label,
                logit_standardise=o.logit_standardise, warmup_factor=0.0,
            )
        elif self.kd_loss == "dist":
            loss.kd = DISTLoss(tau=o.tau, detach_teacher=o.detach_teacher, multi_label=o.multi_label)
        elif self.kd_loss != "kl":
            raise ValueError(f"unknown kd_loss {self.kd_loss!r}; use 'kl', 'dkd' or 'dist'.")
        return loss

    def trainer(self, **kwargs: Any) -> KDTrainer:
        """KD's trainer; DKD's warm-up factor is scheduled on it (0 to 1 over the first twelfth of the run)."""
        trainer = super().trainer(**kwargs)
        if self.kd_loss == "dkd":
            steps = max(1, self.options.epochs * trainer.state.epoch_length // 12)
            LinearLossWeight(self.loss.kd, "warmup_factor", 0.0, 1.0, steps).attach(trainer)
        return trainer

    def trainer_kwargs(self) -> dict[str, Any]:  # noqa: D102
        return {**super().trainer_kwargs(), "teacher_head": self.probe}
