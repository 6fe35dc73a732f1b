"""What the logit-distillation losses share: temperature, teacher detaching, and logit standardisation."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["LogitPairLoss", "standardise_logits"]


def standardise_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each sample's logits over the classes (Sun et al., CVPR 2024, "Logit Standardization in KD").

    ``(z - mean_c z) / (std_c z + eps)`` with the population standard deviation (divisor C), so a sample's
    standardised logits have mean 0 and standard deviation 1 whatever C is. The authors' code uses
    ``torch.std``'s unbiased divisor C - 1 instead, which only rescales every standardised logit by the constant
    ``sqrt((C - 1) / C)``, i.e. multiplies the effective temperature by ``sqrt(C / (C - 1))``: 1.41 for C = 2,
    1.04 for C = 14. The population form keeps that temperature independent of C.

    Args:
        logits: (N, C), the classes on dim 1.
        eps: added to the standard deviation, so constant logits give zeros (a uniform softmax), not NaN.

    Returns:
        (N, C) tensor of the input's dtype.
    """
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


class LogitPairLoss(_Loss):
    """Base of the losses between a student's and a teacher's logits (B, C): validated options, scaled logits.

    Args:
        tau: temperature (> 0).
        detach_teacher: stop gradients into the teacher logits.
        multi_label: per-class sigmoid distributions instead of one softmax.
        logit_standardise: z-score both sides' logits per sample before the temperature (single-label only).

    Raises:
        ValueError: ``tau`` is not positive, or ``logit_standardise`` with ``multi_label``.
    """

    def __init__(
        self, tau: float, detach_teacher: bool = True, multi_label: bool = False, logit_standardise: bool = False
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}.")
        if logit_standardise and multi_label:
            raise ValueError(
                "logit_standardise needs softmax (single-label) logits: z-scoring per-class sigmoid logits over the "
                "classes changes which findings are present. Set logit_standardise=False for multi-label tasks."
            )
        self.tau = float(tau)
        self.detach_teacher = detach_teacher
        self.multi_label = multi_label
        self.logit_standardise = logit_standardise

    def scaled_logits(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides' logits as the loss sees them: float32, standardised if asked, divided by ``tau``.

        Args:
            input: student logits (B, C).
            target: teacher(-branch) logits (B, C), detached when ``detach_teacher``.

        Returns:
            ``(student, teacher)``, each (B, C) float32.

        Raises:
            ValueError: the two logit tensors differ in shape.
        """
        if input.shape != target.shape:
            raise ValueError(f"student logits {tuple(input.shape)} and teacher logits {tuple(target.shape)} differ.")
        if self.detach_teacher:
            target = target.detach()
        s, t = input.float(), target.float()
        if self.logit_standardise:
            s, t = standardise_logits(s), standardise_logits(t)
        return s / self.tau, t / self.tau
