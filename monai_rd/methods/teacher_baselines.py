"""The teacher itself as the deployed model: the ceilings a student is measured against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from monai_rd.methods.kd import TeacherHeadMethod
from monai_rd.networks.linear_probe import TeacherLinearProbe

__all__ = ["TeacherBaseline"]


class TeacherBaseline(TeacherHeadMethod):
    """Deploys the teacher with its head instead of training a student (``probe``, ``finetune``, ``lora``).

    ``probe`` is the frozen teacher's linear probe: the ceiling a frozen teacher offers. ``finetune`` and ``lora``
    adapt the teacher with that head first (see :class:`~monai_rd.methods.kd.TeacherHeadMethod`): what deploying an
    adapted teacher would give. The model validated, tested and saved as ``models/model.pt`` is the teacher and its
    head (the file holds the head and what adaptation changed, never the teacher's own weights); ``run`` evaluates
    it on the validation split once.
    """

    def __init__(self, options: Any, adapt: str | None = None, **components: Any) -> None:
        super().__init__(options, adapt=adapt, **components)
        self._network: nn.Module | None = None

    def build_parts(self) -> None:
        """The deployed classifier: the teacher and its head (the student is built by the recipe but not trained)."""
        self._network = self.classifier if self.classifier is not None else TeacherLinearProbe(self.teacher, self.probe)

    @property
    def network(self) -> nn.Module:
        """The teacher and its head."""
        if self._network is None:
            raise RuntimeError("TeacherBaseline.network is read before deploy(student) was called.")
        return self._network

    @classmethod
    def deployed_network(
        cls, options: Any, student: nn.Module, teacher: Callable[..., nn.Module] | None = None
    ) -> nn.Module:
        """The teacher (from its factory) with a head to load ``model.pt`` into; the probe is not fitted here."""
        method = cls(options, teacher=teacher, **options.spec.params)
        method.teacher = method.make_teacher()
        return method.deploy(student)

    @property
    def uses_cache(self) -> bool:
        """The probe is fitted from cached features; an adapted teacher fits its head during adaptation."""
        return self.classifier is None and self.options.cache_teacher

    def trainer_kwargs(self) -> dict[str, Any]:
        """No student is trained: the recipe's trainer (built, never run) gets no teacher signal."""
        return {}

    def run(self, trainer: Any, evaluator: Any) -> None:
        """Evaluate the teacher and its head on the validation split (written as the run's metrics and model)."""
        evaluator.run()
