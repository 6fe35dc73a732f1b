"""The Deep Reprogramming Distillation (DRD) objective: RD's terms at every stage of a staged student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_rd.losses.dense_rd import DenseRDLoss
from monai_rd.losses.rd import RDLoss

__all__ = ["DRDLoss", "DenseDRDLoss"]


def _stage_list(value: Any, name: str) -> list[torch.Tensor]:
    """A per-stage argument as a list of tensors (None: no stage)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
        raise TypeError(
            f"DRD's {name} must be a list with one tensor per stage, got {type(value).__name__}; a single teacher "
            "branch (RD) goes to RDLoss/DenseRDLoss instead."
        )
    return list(value)


class _StagedRD:
    """DRD's ``forward``, shared by :class:`DRDLoss` and :class:`DenseDRDLoss`.

    A mixin placed before :class:`RDLoss` or :class:`DenseRDLoss`, whose ``supervised``, ``kd_term`` and
    ``cka_term`` decide what one stage's terms are for the task (classification or dense).
    """

    alpha: float
    beta: float
    gamma: float
    supervised: Any
    kd_term: Any
    cka_term: Any
    kd: Any

    def __init__(self, *, detach_hybrid: bool = True, **kwargs: Any) -> None:
        if "detach_teacher" in kwargs:
            raise ValueError("DRD's KL detaches the hybrid logits: set detach_hybrid, not detach_teacher.")
        super().__init__(detach_teacher=detach_hybrid, **kwargs)  # type: ignore[call-arg]

    @property
    def detach_hybrid(self) -> bool:
        """Whether the KL terms stop the gradient into the hybrid logits (the KL's teacher side)."""
        return bool(self.kd.detach_teacher)

    def forward(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor,
        hybrid_logits: Sequence[torch.Tensor] | None = None,
        student_stage_maps: Sequence[torch.Tensor] | None = None,
        projected_maps: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            student_logits: z_S, the student's own logits.
            target: labels (see ``supervised``).
            hybrid_logits: z_i for each stage i: the projected teacher map of stage i fed through the student's
                stages i+1..N and head; each shaped like ``student_logits``. None or empty: the student alone.
            student_stage_maps: s_i, the student's map after stage i.
            projected_maps: phi_i(f_i^T), the projected teacher map of stage i, shaped like s_i.

        Returns:
            Dict with the weighted total under ``"loss"``, the unweighted ``"ce_student"`` and the unweighted sums
            over the stages ``"ce_hybrid"``, ``"kd"`` and ``"cka"`` (the sum of ``1 - CKA``), and per stage i
            ``"ce_hybrid_stage{i}"``, ``"kd_stage{i}"`` and ``"cka_stage{i}"``. The CKA terms are zero when
            ``gamma`` is 0 or the maps are not given.

        Raises:
            TypeError: a per-stage argument is not a list (e.g. a single tensor).
            ValueError: the lists differ in length, or a shape does not fit.
        """
        hybrid = _stage_list(hybrid_logits, "hybrid_logits")
        maps_s = _stage_list(student_stage_maps, "student_stage_maps")
        maps_t = _stage_list(projected_maps, "projected_maps")
        if (maps_s or maps_t) and not len(maps_s) == len(maps_t) == len(hybrid):
            raise ValueError(
                f"DRD needs one of each per stage; got {len(hybrid)} hybrid logits, {len(maps_s)} student stage maps "
                f"and {len(maps_t)} projected teacher maps."
            )
        use_cka = self.gamma != 0 and bool(maps_s)
        ce_s = self.supervised(student_logits, target)
        zero = ce_s.new_zeros(())
        out = {"ce_student": ce_s, "ce_hybrid": zero, "kd": zero, "cka": zero}
        for i, z_i in enumerate(hybrid):
            kd_i = self.kd_term(student_logits, z_i)  # first: it names a shape mismatch of the two logits
            ce_i = self.supervised(z_i, target)
            cka_i = self.cka_term(maps_t[i], maps_s[i]) if use_cka else zero
            out.update({f"ce_hybrid_stage{i}": ce_i, f"kd_stage{i}": kd_i, f"cka_stage{i}": cka_i})
            out["ce_hybrid"], out["kd"], out["cka"] = out["ce_hybrid"] + ce_i, out["kd"] + kd_i, out["cka"] + cka_i
        if not hybrid:
            return {"loss": ce_s, **out}
        total = ce_s + self.alpha * out["ce_hybrid"] + self.beta * out["kd"] + self.gamma * out["cka"]
        return {"loss": total, **out}


class DRDLoss(_StagedRD, RDLoss):
    """DRD loss (Du et al., arXiv 2605.04447) for classification, single- or multi-label.

    ``L = L_sup(z_S) + alpha * sum_i L_sup(z_i) + beta * sum_i tau^2 KL(p(z_i) || p(z_S))
    + gamma * sum_i (1 - CKA(phi_i(f_i^T), s_i))``

    Teacher and student are cut into N stages; ``phi_i(f_i^T)``, the teacher's stage-i map projected to the shape
    of the student's stage-i map ``s_i``, is fed through the student's stages i+1..N and head, giving the hybrid
    logits ``z_i``. Each stage's terms are :class:`RDLoss`'s, with the hybrid logits in the teacher branch's
    place (RD is DRD with one stage: the reprogrammed teacher features through the shared head):

    - ``L_sup``: :meth:`RDLoss.supervised` (CE, or BCE with ``multi_label``); unlabelled rows (``UNLABELLED``) are
      left out of it, and kept in the KL and CKA terms.
    - KL: :class:`~monai_rd.losses.DistillKLLoss` at temperature ``tau`` times ``tau^2`` (per-class sigmoid KL
      averaged over the classes with ``multi_label``; z-scored logits with ``logit_standardise``). With
      ``detach_hybrid=True`` (default) the hybrid logits are its teacher side and are detached, so the KL trains
      the student's own path towards the hybrids, and each hybrid path learns from its own ``L_sup`` only (as the
      teacher branch does in RD). ``detach_hybrid=False`` lets the KL pull both ways.
    - CKA: linear CKA (:class:`~monai_rd.losses.CKALoss`, float32 with autocast off) between the flattened maps,
      one row per sample: (B, C*H*W). Both maps receive its gradient (the projection phi_i and the student).

    ``alpha`` and ``beta`` are plain attributes (a scheduler decays them linearly from 1, as in RD). Nothing here
    reaches the frozen teacher: its maps enter only through ``phi_i``.

    Args:
        detach_hybrid: detach the hybrid logits inside the KL terms.
        kwargs: :class:`RDLoss`'s other arguments by keyword (``alpha``, ``beta``, ``gamma``, ``tau``,
            ``multi_label``, ``cka_kernel``, ``cka_estimator``, ``label_smoothing``, ``logit_standardise``).

    Example:
        >>> loss = DRDLoss(tau=4.0)
        >>> terms = loss(z_s, y, [z_1, z_2], [s_1, s_2], [phi_1, phi_2])
        >>> terms["loss"].backward()
    """


class DenseDRDLoss(_StagedRD, DenseRDLoss):
    """DRD loss for dense (segmentation) outputs, 2D or 3D: :class:`DRDLoss`'s terms per voxel.

    - ``L_sup``: :meth:`DenseRDLoss.supervised` (Dice+CE) of the student's and each hybrid's logits
      (B, C, *spatial).
    - KL: voxel-wise, as :meth:`DenseRDLoss.kd_term` (the softmax KL averaged over all voxels, times ``tau^2``).
    - CKA per stage: rows are voxels, drawn from the stage's two maps at the same positions by
      :meth:`DenseRDLoss.sample_voxels` (``cka_num_voxels`` per stage, new positions each stage and call), so a
      batch of 2 still gives an informative CKA; ``phi_i(f_i^T)`` and ``s_i`` must share the batch and spatial
      size.

    Args:
        detach_hybrid: detach the hybrid logits inside the KL terms.
        kwargs: :class:`DenseRDLoss`'s other arguments by keyword (``alpha``, ``beta``, ``gamma``, ``tau``,
            ``cka_mode``, ``cka_num_voxels``, ``cka_kernel``, ``cka_estimator``, ``include_background``,
            ``lambda_dice``, ``lambda_ce``, ``seed``, ``logit_standardise``).
    """
