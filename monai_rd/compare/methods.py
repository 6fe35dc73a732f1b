"""The methods a bundle can train with ``--method``: RD, its ablations, and the baselines RD is compared against.

Every method runs through the same bundle, data path, student, optimizer, LR schedule, epochs, checkpoint
selection and seeds; a method only decides which teacher signal the student learns from. The recipe reads the
method through :func:`as_method` and :func:`method_spec` (``opt#method``, ``method_spec``), and the pieces it
needs from :class:`Method`'s fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn as nn

from monai_rd.utils.options import as_bool, as_optional_float
from monai_rd.errors import OptionError

__all__ = ["METHODS", "Method", "as_method", "create_feature_loss", "distill_weight", "method_spec", "teacher_lr"]


@dataclasses.dataclass(frozen=True)
class Method:
    """What one ``--method`` value trains.

    Attributes:
        name: the option value.
        summary: one line for tables and ``--help``.
        teacher: builds the teacher (and its feature cache).
        phi: trains RD's reprogramming module Phi with the shared head.
        probe: the teacher gets a linear head (``teacher_probe``), fitted as its linear probe on its pooled
            training features before training.
        adapt: ``finetune`` (every teacher weight) or ``lora`` (LoRA adapters, HF ``peft``): the teacher and that
            head are then trained end to end on the training split (LP-FT, :func:`monai_rd.engines.adapt_teacher`)
            before the feature cache is built, then frozen; everything after sees the adapted teacher.
        teacher_lr: the adaptation's default AdamW learning rate (``--teacher_lr``).
        kd_from_probe: the student distils the (adapted) teacher's head logits (Hinton KD).
        deploys_teacher: the evaluated model is the (adapted) teacher and its head; no student is trained.
        feature_loss: ``fitnets``, ``at``, ``sp`` or ``crd``: a feature-distillation term.
        feature_weight: that term's default weight (RepDistiller's benchmark values; ``--distill_weight``).
        alpha: fixed teacher-branch CE weight, start and end (None: ``--alpha_start``, ``--alpha_end``).
        gamma: fixed CKA weight (None: ``--gamma``).
        direct: trains Phi and the head first, then freezes them (direct reprogramming).
    """

    name: str
    summary: str
    teacher: bool = True
    phi: bool = False
    probe: bool = False
    adapt: str | None = None
    teacher_lr: float = 0.0
    kd_from_probe: bool = False
    deploys_teacher: bool = False
    feature_loss: str | None = None
    feature_weight: float = 0.0
    alpha: float | None = None
    gamma: float | None = None
    direct: bool = False

    def option(self, name: str, value: Any) -> Any:
        """The method's fixed value of option ``name`` (``alpha`` or ``gamma``), else ``value``."""
        fixed = getattr(self, name)
        return value if fixed is None else fixed


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("student", "the student trained alone (CE), no teacher", teacher=False),
        Method("rd", "Reprogramming Distillation: Phi + shared head, CE_T, KD and CKA", phi=True),
        Method("rd_no_cka", "RD without the CKA term (gamma = 0)", phi=True, gamma=0.0),
        Method("rd_no_cotrain", "RD without the teacher-branch CE (alpha = 0)", phi=True, alpha=0.0),
        Method(
            "rd_direct",
            "direct reprogramming: Phi + head fitted first on the teacher features, frozen, then distilled",
            phi=True,
            alpha=0.0,
            direct=True,
        ),
        Method("kd", "Hinton KD from the teacher's linear probe", probe=True, kd_from_probe=True, alpha=0.0),
        Method("probe", "the teacher's linear probe (deploys the teacher)", probe=True, deploys_teacher=True),
        Method(
            "finetune",
            "the teacher fine-tuned end to end with a linear head (LP-FT; deploys the teacher: the ceiling)",
            probe=True,
            adapt="finetune",
            teacher_lr=1e-4,
            deploys_teacher=True,
        ),
        Method(
            "lora",
            "the teacher adapted with LoRA (peft) and a linear head (deploys the teacher: the PEFT ceiling)",
            probe=True,
            adapt="lora",
            teacher_lr=1e-3,
            deploys_teacher=True,
        ),
        Method(
            "lora_kd",
            "PEFT + KD: Hinton KD from the LoRA-adapted teacher and its head",
            probe=True,
            adapt="lora",
            teacher_lr=1e-3,
            kd_from_probe=True,
            alpha=0.0,
        ),
        Method("fitnets", "FitNets hint on a 1x1-projected student map", feature_loss="fitnets", feature_weight=100.0),
        Method("at", "attention transfer", feature_loss="at", feature_weight=1000.0),
        Method("sp", "similarity-preserving KD", feature_loss="sp", feature_weight=3000.0),
        Method("crd", "contrastive representation distillation, in-batch", feature_loss="crd", feature_weight=0.8),
    )
}


def as_method(method: Any, distill: Any = True) -> str:
    """The ``--method`` option, with ``--distill false`` accepted as ``--method student``.

    Args:
        method: the option's value.
        distill: the older ``--distill`` option (true/false).

    Returns:
        A key of :data:`METHODS`.

    Raises:
        OptionError: an unknown method, or ``--distill false`` with a method other than ``student``/``rd``.
    """
    name = str(method).strip().lower()
    if name not in METHODS:
        raise OptionError(f"--method must be one of {', '.join(METHODS)}; got {method!r}.")
    if not as_bool(distill, "distill"):
        if name not in ("rd", "student"):
            raise OptionError(
                f"--distill false means --method student (the student alone); it contradicts --method {name}. "
                "Drop --distill false."
            )
        return "student"
    return name


def method_spec(name: str) -> Method:
    """The :class:`Method` of a name from :func:`as_method`."""
    return METHODS[as_method(name)]


def distill_weight(method: Method, value: Any) -> float:
    """The feature-distillation weight: ``--distill_weight``, or the method's default when it is null.

    Raises:
        OptionError: a negative or non-numeric value.
    """
    weight = as_optional_float(value, "distill_weight")
    if weight is None:
        return method.feature_weight
    if weight < 0:
        raise OptionError(f"--distill_weight must be at least 0, got {weight}.")
    return weight


def teacher_lr(method: Method, value: Any) -> float:
    """The teacher adaptation's learning rate: ``--teacher_lr``, or the method's default when it is null.

    Raises:
        OptionError: a non-positive or non-numeric value.
    """
    lr = as_optional_float(value, "teacher_lr")
    if lr is None:
        return method.teacher_lr
    if lr <= 0:
        raise OptionError(f"--teacher_lr must be positive, got {lr}.")
    return lr


def create_feature_loss(
    method: Method, student_channels: int, teacher_channels: int | None, spatial_dims: int = 2
) -> nn.Module | None:
    """The feature-distillation loss of ``method`` (None when it has none).

    Args:
        method: the method.
        student_channels: channels of the student's last feature map (its pooled feature width).
        teacher_channels: channels of the teacher's features.
        spatial_dims: 2 or 3.

    Returns:
        A loss module ``f(student_map, teacher_features)``, or None.
    """
    from monai_rd import losses

    if method.feature_loss is None or teacher_channels is None:
        return None
    if method.feature_loss == "fitnets":
        return losses.FitNetsLoss(student_channels, teacher_channels, spatial_dims=spatial_dims)
    if method.feature_loss == "at":
        return losses.AttentionTransferLoss()
    if method.feature_loss == "sp":
        return losses.SimilarityPreservingLoss()
    return losses.ContrastiveRepresentationLoss(student_channels, teacher_channels)
