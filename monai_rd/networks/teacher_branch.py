"""RD's teacher branch as one model: ``h(Phi(T(x)))``, to measure how well the reprogrammed teacher classifies."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["TeacherBranch"]


class TeacherBranch(nn.Module):
    """The teacher branch of RD: frozen teacher T, reprogramming Phi and the shared classifier h, as one network.

    RD trains the student through a branch that classifies the *reprogrammed teacher*: ``h(Phi(T(x)))``. How
    accurate that branch is on held-out images says whether RD captured the teacher's margin at all (if it is
    no better than the student, the student cannot learn more from it). Evaluated by a MONAI
    ``SupervisedEvaluator`` beside the student's; it holds references to the training modules (no copies), so it
    always scores the current Phi and head.

    With ``teacher=None`` the input is the teacher's features already (e.g. from a
    :class:`~monai_rd.data.TeacherFeatureCache` of the validation split), so the frozen teacher is not rerun every
    epoch.

    Args:
        reprogrammer: Phi (a :class:`~monai_rd.networks.ReprogrammingNet`), teacher features -> (B, D).
        head: the shared classifier h, (B, D) -> (B, num_classes): the student's ``head`` (its ``classify`` applies
            dropout too, which is the identity in eval mode).
        teacher: the frozen teacher, images -> (B, C_T, *spatial) features; None when the inputs are features.

    Raises:
        TypeError: ``reprogrammer`` or ``head`` is not an ``nn.Module``.
    """

    def __init__(self, reprogrammer: nn.Module, head: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        for name, part in (("reprogrammer", reprogrammer), ("head", head)):
            if not isinstance(part, nn.Module):
                raise TypeError(
                    f"TeacherBranch's {name} must be an nn.Module (Phi and the student's shared `head`); "
                    f"got {type(part).__name__}."
                )
        self.reprogrammer = reprogrammer
        self.head = head
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherBranch:
        """Sets Phi and the head to ``mode``; the teacher stays in eval mode (it is frozen)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images (B, C, H, W) for the teacher, or, without a teacher, its features (B, C_T, *spatial) or
                (B, C_T).

        Returns:
            Teacher-branch logits ``h(Phi(T(x)))``, (B, num_classes).
        """
        if self.teacher is not None:
            with torch.no_grad():
                x = self.teacher(x)
        return self.head(self.reprogrammer(x.float()))
