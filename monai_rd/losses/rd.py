"""The combined Reprogramming Distillation (RD) objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_rd.losses.cka import CKALoss
from monai_rd.losses.distill_kl import DistillKLLoss
from monai_rd.utils.constants import UNLABELLED

__all__ = ["RDLoss"]


class RDLoss(_Loss):
    """RD loss: supervised terms on both branches of a shared classifier, KD and CKA alignment.

    ``CE(h(z_S), y) + alpha * CE(h(z_T), y) + beta * tau^2 * KL(p_T || p_S) + gamma * (1 - CKA(z_T, z_S))``

    ``alpha`` and ``beta`` are plain attributes, so a ``monai.handlers.ParamSchedulerHandler`` can decay them
    during training (the paper decays both linearly from 1 to 0). With ``multi_label=True`` both CE terms
    become ``BCEWithLogits`` and KD uses per-class sigmoid distributions; both average over the classes, so
    their balance does not depend on the number of classes (see :class:`~monai_rd.losses.DistillKLLoss`).

    When the teacher-branch tensors are ``None`` (student trained alone) only the student CE term is computed.

    Args:
        alpha: weight of the teacher-branch CE term (start value).
        beta: weight of the KD term (start value).
        gamma: weight of the CKA term.
        tau: KD temperature.
        detach_teacher: detach the teacher-branch logits inside the KD term.
        multi_label: targets are multi-hot (B, C) floats instead of class indices (B,).
        cka_kernel: ``"linear"`` or ``"rbf"``.
        cka_estimator: ``"biased"`` or ``"unbiased"``.
        label_smoothing: label smoothing of the single-label CE terms.
        logit_standardise: z-score both branches' logits per sample before the KD temperature (Sun et al.,
            CVPR 2024; single-label only, see :class:`~monai_rd.losses.DistillKLLoss`).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 4.0,
        detach_teacher: bool = True,
        multi_label: bool = False,
        cka_kernel: str = "linear",
        cka_estimator: str = "biased",
        label_smoothing: float = 0.0,
        logit_standardise: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.multi_label = multi_label
        self.label_smoothing = label_smoothing
        self.kd = DistillKLLoss(
            tau=tau, detach_teacher=detach_teacher, multi_label=multi_label, logit_standardise=logit_standardise
        )
        self.cka = CKALoss(kernel=cka_kernel, estimator=cka_estimator)

    def supervised(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Task loss of one branch, over the labelled rows of the batch.

        Rows labelled ``monai_rd.data.unlabelled.UNLABELLED`` (-1; multi-label: values -1) are left out; the
        distillation terms still see them.

        Args:
            logits: (B, C).
            target: class indices (B,) or (B, 1); multi-hot (B, C) when ``multi_label``.

        Returns:
            Scalar tensor, the mean over the labelled rows (0, still attached to ``logits``, when there is none).

        Raises:
            ValueError: the target shape does not fit the logits.
        """
        if self.multi_label:
            if target.shape != logits.shape:
                raise ValueError(
                    f"multi-label targets must be multi-hot with the logits' shape {tuple(logits.shape)}, "
                    f"got {tuple(target.shape)}."
                )
            # unlabelled values (UNLABELLED, -1) weigh 0; sum / count, so no host sync and 0 for a batch without labels
            known = (target >= 0).float()
            bce = F.binary_cross_entropy_with_logits(
                logits.float(), target.float().clamp_min(0), weight=known, reduction="sum"
            )
            return bce / known.sum().clamp_min(1)
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must be class indices of shape (B,) with B={logits.shape[0]}, got {tuple(target.shape)}; "
                "set multi_label=True for multi-hot targets."
            )
        target = target.long()
        # torch's ignore_index leaves unlabelled rows out; sum / count rather than a host-side check, so the finite
        # check stays the step's one sync and a batch of unlabelled images only gives 0 (mean would give 0/0)
        ce = F.cross_entropy(logits.float(), target, ignore_index=UNLABELLED, label_smoothing=self.label_smoothing,
                             reduction="sum")
        return ce / (target != UNLABELLED).sum().clamp_min(1)

    def kd_term(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The unweighted KD term between two branches' logits (B, C): :attr:`kd` (Hinton's KL by default; any
        logit loss ``kd(student, teacher)`` can replace it, e.g. DIST, and one with ``uses_labels`` also gets the
        labels, e.g. DKD)."""
        if getattr(self.kd, "uses_labels", False):
            return self.kd(student_logits, teacher_logits, target)
        return self.kd(student_logits, teacher_logits)

    def cka_term(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """The unweighted ``1 - CKA`` term between two batches of features (B, ...), one row per sample."""
        return self.cka(teacher_features, student_features)

    def forward(  # type: ignore[override]
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        student_features: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            student_logits: h(z_S), (B, C).
            target: labels, (B,) indices or (B, C) multi-hot.
            teacher_logits: h(z_T), (B, C), or None when training the student alone.
            student_features: z_S, (B, D).
            teacher_features: z_T, (B, D).

        Returns:
            Dict with the weighted total under ``"loss"`` and the unweighted terms under ``"ce_student"``,
            ``"ce_teacher"``, ``"kd"`` and ``"cka"`` (absent terms are zero).

        Raises:
            ValueError: the two branches' logits differ in shape, or the labels do not fit the logits.
        """
        ce_s = self.supervised(student_logits, target)
        zero = ce_s.new_zeros(())
        if teacher_logits is None:
            return {"loss": ce_s, "ce_student": ce_s, "ce_teacher": zero, "kd": zero, "cka": zero}
        kd = self.kd_term(student_logits, teacher_logits, target)  # first: it names a shape mismatch of the branches
        ce_t = self.supervised(teacher_logits, target)
        if self.gamma != 0 and student_features is not None and teacher_features is not None:
            cka_term = self.cka_term(teacher_features, student_features)
        else:
            cka_term = zero
        total = ce_s + self.alpha * ce_t + self.beta * kd + self.gamma * cka_term
        return {"loss": total, "ce_student": ce_s, "ce_teacher": ce_t, "kd": kd, "cka": cka_term}
