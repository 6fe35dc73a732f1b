"""Temperature-scaled knowledge-distillation loss between two sets of logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["DistillKLLoss"]


class DistillKLLoss(_Loss):
    """``tau^2 * KL(p_teacher || p_student)`` with temperature-softened distributions (Hinton et al. 2015).

    The ``tau^2`` factor keeps the gradient scale independent of the temperature.

    Single-label (default): ``p`` and ``q`` are softmax distributions over the C classes and the loss is the
    usual ``sum_c p_c log(p_c / q_c)``, averaged over the batch.

    Multi-label (``multi_label=True``): each class is an independent Bernoulli (sigmoid) and the loss is the
    binary KL **averaged** over the C classes and the batch. The mean, not the sum, keeps KD on the scale of
    ``binary_cross_entropy_with_logits`` (which also averages over classes) whatever C is; summing would weight
    KD C times more than the task loss (14x for ChestX-ray14). For one binary output (C = 1) the mean is the
    sum, and the loss equals the single-label loss on the two-class logits ``(0, z)``, since
    ``sigmoid(z) = softmax((0, z))[1]``. The single-label loss is unaffected by this choice.

    Args:
        tau: softmax temperature (> 0).
        detach_teacher: stop gradients into the teacher-branch logits, so the KL term only moves the student.
        multi_label: use per-class sigmoid distributions instead of one softmax.

    Raises:
        ValueError: ``tau`` is not positive.
    """

    def __init__(self, tau: float = 4.0, detach_teacher: bool = True, multi_label: bool = False) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}.")
        self.tau = float(tau)
        self.detach_teacher = detach_teacher
        self.multi_label = multi_label

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student logits (B, C).
            target: teacher(-branch) logits (B, C).

        Returns:
            Scalar tensor, averaged over the batch (and over the classes when ``multi_label``).

        Raises:
            ValueError: the two logit tensors differ in shape.
        """
        if input.shape != target.shape:
            raise ValueError(f"student logits {tuple(input.shape)} and teacher logits {tuple(target.shape)} differ.")
        if self.detach_teacher:
            target = target.detach()
        s, t = input.float() / self.tau, target.float() / self.tau
        if self.multi_label:
            # binary KL per class: p log p/q + (1-p) log (1-p)/(1-q)
            log_q1, log_q0 = F.logsigmoid(s), F.logsigmoid(-s)
            log_p1, log_p0 = F.logsigmoid(t), F.logsigmoid(-t)
            p1 = log_p1.exp()
            kl = p1 * (log_p1 - log_q1) + (1 - p1) * (log_p0 - log_q0)
            return kl.mean() * self.tau**2  # mean over classes as well as the batch, like BCE
        log_q = F.log_softmax(s, dim=1)
        log_p = F.log_softmax(t, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * self.tau**2
