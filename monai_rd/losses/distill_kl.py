"""Temperature-scaled knowledge-distillation loss between two sets of logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["DistillKLLoss"]


class DistillKLLoss(_Loss):
    """``tau^2 * KL(p_teacher || p_student)`` with temperature-softened distributions (Hinton et al. 2015).

    The ``tau^2`` factor keeps the gradient scale independent of the temperature. With ``multi_label=True``
    each class is an independent Bernoulli (sigmoid) and the per-class binary KL terms are summed over
    classes, so the loss suits multi-label tasks.

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
            Scalar tensor, averaged over the batch.

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
            return kl.sum(dim=1).mean() * self.tau**2
        log_q = F.log_softmax(s, dim=1)
        log_p = F.log_softmax(t, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * self.tau**2
