"""Decoupled knowledge distillation (DKD): target-class and non-target-class KD weighted apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_rd.data.unlabelled import UNLABELLED
from monai_rd.losses.distill_kl import DistillKLLoss, binary_kl

__all__ = ["DecoupledKDLoss"]


class DecoupledKDLoss(DistillKLLoss):
    """DKD (Zhao et al., CVPR 2022): ``warmup_factor * (alpha * TCKD + beta * NCKD)``.

    With ``p = softmax(z / tau)`` and target class ``t``, Hinton's KD splits as
    ``KL(p_T || p_S) = TCKD + (1 - p_T[t]) * NCKD``:

    - TCKD: the KL between the binary distributions ``(p[t], 1 - p[t])`` of teacher and student (how sure of the
      target class);
    - NCKD: the KL between the softmax distributions over the C - 1 non-target classes (the "dark knowledge").

    DKD drops the teacher-confidence factor ``1 - p_T[t]`` that suppresses NCKD on well-predicted samples and
    weights the two parts freely. Each part is averaged over the batch and multiplied by ``tau^2``, as in the
    authors' code (megvii-research/mdistiller ``DKD.py``), which agrees with the paper. TCKD is computed here
    as a binary KL of the log-odds ``z[t]/tau - logsumexp_{c != t} z[c]/tau`` and NCKD from the non-target
    logits themselves, rather than from masked probabilities (the code's ``log`` of summed probabilities and its
    ``-1000`` mask): the same values without underflow.

    Defaults are mdistiller's published defaults (its ``cfg.py``, used by its CIFAR-100 configs): ``alpha = 1``,
    ``beta = 8``, ``tau = 4``, and the whole DKD loss ramped linearly from 0 to 1 over the first 20 of 240
    epochs. ImageNet's configs use ``beta = 0.5``, ``tau = 1`` and a 1-epoch ramp: ``beta`` grows with how much
    the teacher's non-target ranking is worth, which the paper tunes per dataset. The ramp is the plain
    attribute :attr:`warmup_factor` (the factor itself, 1 by default), for the trainer's scheduler to drive, like
    :class:`~monai_rd.losses.RDLoss`'s ``alpha`` and ``beta``; the loss counts no steps.

    With ``logit_standardise=True`` both sides' logits are z-scored first (Sun et al., CVPR 2024), ``tau`` then
    being the base temperature. The authors' setting for DKD on CIFAR-100 is ``alpha = 9``, ``beta = 72``,
    ``tau = 2`` (the defaults times their KD weight of 9).

    Multi-label (``multi_label=True``): each class is its own binary distribution (sigmoid), whose target part
    is the whole distribution and whose non-target part is a distribution over one outcome, whose KL is 0.
    DKD therefore reduces to ``warmup_factor * alpha`` times :class:`DistillKLLoss`'s multi-label KD (the binary KL
    averaged over the classes and the batch); the labels are not needed. The same holds for two single-label
    classes (C = 2): NCKD is 0.

    Unlabelled rows (label ``UNLABELLED``, -1) take the teacher's most probable class as their target, so their
    distillation, like KD's, still reaches the student. This is DKD's own split applied to the class the teacher
    predicts, and for a labelled row the teacher's top class is the label whenever the teacher is right; leaving
    the rows out would drop the unlabelled images' non-target knowledge, which is what they carry.

    Args:
        alpha: TCKD weight.
        beta: NCKD weight.
        tau: temperature (> 0); with ``logit_standardise`` the base temperature.
        warmup_factor: factor of the whole loss in [0, 1], for a scheduler to ramp from 0 to 1 (1: no ramp).
        detach_teacher: stop gradients into the teacher logits.
        multi_label: per-class sigmoid distributions (DKD reduces to ``alpha`` times binary KD).
        logit_standardise: z-score both sides' logits per sample before the temperature (single-label only).

    Raises:
        ValueError: ``tau`` is not positive, ``warmup_factor`` is outside [0, 1], or ``logit_standardise`` with
            ``multi_label``.

    Example:
        >>> dkd = DecoupledKDLoss()
        >>> loss = dkd(student_logits, teacher_logits, labels)  # (B, C), (B, C), (B,)
        >>> dkd.warmup_factor = min(epoch / 20, 1.0)  # e.g. from a ParamSchedulerHandler
    """

    uses_labels = True  # its split needs each row's target class (RDLoss passes the labels)

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        tau: float = 4.0,
        warmup_factor: float = 1.0,
        detach_teacher: bool = True,
        multi_label: bool = False,
        logit_standardise: bool = False,
    ) -> None:
        super().__init__(
            tau=tau, detach_teacher=detach_teacher, multi_label=multi_label, logit_standardise=logit_standardise
        )
        if not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(
                f"warmup_factor is the ramp's current factor in [0, 1] (not a number of epochs), got {warmup_factor}."
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.warmup_factor = float(warmup_factor)

    def targets(self, teacher_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Each row's target class: its label, or the teacher's most probable class where it has none.

        Args:
            teacher_logits: (B, C).
            labels: class indices (B,) or (B, 1), ``UNLABELLED`` for an unlabelled row; None: no row has one.

        Returns:
            (B,) int64 class indices.

        Raises:
            ValueError: the labels are not (B,) class indices.
        """
        teacher_top = teacher_logits.detach().argmax(dim=1)
        if labels is None:
            return teacher_top
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != teacher_logits.shape[0]:
            raise ValueError(
                f"DKD needs class indices of shape (B,) with B={teacher_logits.shape[0]}, got {tuple(labels.shape)}."
            )
        labels = labels.to(teacher_top.device).long()
        return torch.where(labels == UNLABELLED, teacher_top, labels)

    def decoupled(
        self, input: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TCKD and NCKD of every row, unweighted, times ``tau^2``.

        Args:
            input: student logits (B, C).
            target: teacher logits (B, C).
            labels: class indices (B,) (``UNLABELLED`` allowed), or None; ignored when ``multi_label``.

        Returns:
            ``(tckd, nckd)``, each (B,) float32. Multi-label: ``tckd`` is the binary KL averaged over the classes
            and ``nckd`` is 0.

        Raises:
            ValueError: the logits differ in shape or have fewer than 2 classes (single-label), or bad labels.
        """
        s, t = self.scaled_logits(input, target)
        if self.multi_label:
            tckd = binary_kl(s, t).mean(dim=1) * self.tau**2
            return tckd, torch.zeros_like(tckd)
        if s.ndim != 2 or s.shape[1] < 2:
            raise ValueError(f"DKD needs logits (B, C) with C >= 2 classes, got {tuple(s.shape)}.")
        cls = self.targets(target, labels).unsqueeze(1)  # (B, 1)
        # the C - 1 non-target columns of each row, in order, gathered without a host sync
        others = torch.arange(s.shape[1] - 1, device=s.device).expand(s.shape[0], -1)
        others = others + (others >= cls).long()
        s_other, t_other = s.gather(1, others), t.gather(1, others)
        # log-odds of the target class against the rest: sigmoid of it is softmax(z / tau)[t]
        s_odds = s.gather(1, cls)[:, 0] - torch.logsumexp(s_other, dim=1)
        t_odds = t.gather(1, cls)[:, 0] - torch.logsumexp(t_other, dim=1)
        tckd = binary_kl(s_odds, t_odds)
        log_q, log_p = F.log_softmax(s_other, dim=1), F.log_softmax(t_other, dim=1)
        nckd = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        return tckd * self.tau**2, nckd * self.tau**2

    def forward(  # type: ignore[override]
        self, input: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            input: student logits (B, C).
            target: teacher logits (B, C).
            labels: class indices (B,) or (B, 1) with ``UNLABELLED`` rows, or None (every row takes the teacher's
                top class); ignored when ``multi_label``.

        Returns:
            Scalar ``warmup_factor * (alpha * mean(TCKD) + beta * mean(NCKD))``, the means over the batch.

        Raises:
            ValueError: the logits differ in shape or have fewer than 2 classes (single-label), or bad labels.
        """
        tckd, nckd = self.decoupled(input, target, labels)
        return self.warmup_factor * (self.alpha * tckd.mean() + self.beta * nckd.mean())
