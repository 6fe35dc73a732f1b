"""The Reprogramming Distillation objective for dense (segmentation) outputs, 2D or 3D."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from monai_rd.losses.rd import RDLoss

__all__ = ["DenseRDLoss"]

_CKA_MODES = ("voxels", "pooled")


def _as_plain(x: torch.Tensor) -> torch.Tensor:
    # MetaTensor metadata means nothing to a loss and slows every op down
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _voxel_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B * prod(spatial), C): one row per voxel."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class DenseRDLoss(RDLoss):
    """Dense RD loss: the RD terms per voxel, for segmentation logits and feature maps (2D or 3D).

    ``DiceCE(h(f_S), y) + alpha * DiceCE(h(f_T), y) + beta * tau^2 * KL_voxel(p_T || p_S)
    + gamma * (1 - CKA(f_T, f_S))``

    where ``f_S`` is the student decoder's last feature map (B, F, *spatial), ``f_T`` the reprogrammed teacher map
    resampled to the same spatial size, and ``h`` the shared 1x1-conv segmentation head.

    - Task terms: MONAI's :class:`~monai.losses.DiceCELoss` with softmax over the C classes and one-hot targets
      made from the class-index labels (B, 1, *spatial).
    - KD: :class:`~monai_rd.losses.DistillKLLoss` on the (B * N, C) voxel logits, i.e. the softmax KL summed over
      classes and averaged over all B * N voxels, times ``tau^2``; the teacher branch is detached by default.
    - CKA: :class:`~monai_rd.losses.CKALoss` on features sampled at ``cka_num_voxels`` voxel positions drawn
      uniformly without replacement from all B * N voxels of the batch (the same positions in both maps; each row is
      one voxel's F features), or, with ``cka_mode="pooled"``, on the globally average-pooled (B, F) features as in
      the classification loss (which needs a batch of several samples to be informative: with B = 2, linear CKA is
      always 1). A batch with at most ``cka_num_voxels`` voxels uses them all. The positions come from a
      ``torch.Generator`` seeded with ``seed``, so a run is reproducible; it advances every call, so each batch gets
      new positions.

    ``alpha`` and ``beta`` are plain attributes, decayed by a ``ParamSchedulerHandler`` as in :class:`RDLoss`.
    ``forward`` is :class:`RDLoss`'s with dense tensors: ``student_logits`` h(f_S) and ``teacher_logits`` h(f_T)
    (B, C, *spatial), ``target`` class indices (B, 1, *spatial) or (B, *spatial), ``student_features`` f_S
    (B, F, *spatial_f) and ``teacher_features`` f_T (B, F_T, *spatial_f). The returned dict uses
    :class:`RDLoss`'s keys, so RD's handlers work unchanged; here ``ce_student`` and ``ce_teacher`` hold the
    Dice+CE task losses. Unlabelled images are not supported here (Dice+CE needs every voxel's class).

    Args:
        alpha: weight of the teacher-branch Dice+CE term (start value).
        beta: weight of the voxel-wise KD term (start value).
        gamma: weight of the CKA term.
        tau: KD temperature.
        detach_teacher: detach the teacher-branch logits inside the KD term.
        cka_mode: ``"voxels"`` (sampled voxel rows) or ``"pooled"`` (global average pooling).
        cka_num_voxels: voxels sampled per batch for ``cka_mode="voxels"``.
        cka_kernel: ``"linear"`` or ``"rbf"``.
        cka_estimator: ``"biased"`` or ``"unbiased"``.
        include_background: include class 0 in the Dice term.
        lambda_dice: weight of Dice inside each task term.
        lambda_ce: weight of CE inside each task term.
        seed: seed of the voxel-sampling generator.
        logit_standardise: z-score both branches' voxel logits over the classes before the KD temperature
            (Sun et al., CVPR 2024; see :class:`~monai_rd.losses.DistillKLLoss`).

    Raises:
        ValueError: unknown ``cka_mode``, or ``cka_num_voxels`` < 2.

    Example:
        >>> loss = DenseRDLoss(cka_num_voxels=512)
        >>> terms = loss(logits_s, label, logits_t, feats_s, feats_t)  # (B, C, H, W[, D]) ...
        >>> terms["loss"].backward()
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 4.0,
        detach_teacher: bool = True,
        cka_mode: str = "voxels",
        cka_num_voxels: int = 1024,
        cka_kernel: str = "linear",
        cka_estimator: str = "biased",
        include_background: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        seed: int = 0,
        logit_standardise: bool = False,
    ) -> None:
        super().__init__(
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            tau=tau,
            detach_teacher=detach_teacher,
            cka_kernel=cka_kernel,
            cka_estimator=cka_estimator,
            logit_standardise=logit_standardise,
        )
        if cka_mode not in _CKA_MODES:
            raise ValueError(f"cka_mode must be one of {_CKA_MODES}, got {cka_mode!r}.")
        if int(cka_num_voxels) < 2:
            raise ValueError(f"cka_num_voxels must be at least 2 (CKA compares samples), got {cka_num_voxels}.")
        self.cka_mode = cka_mode
        self.cka_num_voxels = int(cka_num_voxels)
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
        )
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def supervised(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice+CE task loss of one branch.

        Args:
            logits: (B, C, *spatial), C >= 2.
            target: class indices (B, 1, *spatial) or (B, *spatial).

        Returns:
            Scalar tensor (float32).

        Raises:
            ValueError: the logits have one channel, or the target does not fit the logits.
        """
        logits, target = _as_plain(logits), _as_plain(target)
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(
                f"dense logits must be (B, C, *spatial) with C >= 2 classes (background included), got "
                f"{tuple(logits.shape)}."
            )
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape[1] != 1 or target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"segmentation labels must be class indices of shape (B, 1, *spatial) = "
                f"{(logits.shape[0], 1, *logits.shape[2:])} for logits {tuple(logits.shape)}, got "
                f"{tuple(target.shape)}; resample the label with the image (nearest) and keep one channel."
            )
        return self.dice_ce(logits.float(), target)

    def sample_voxels(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows CKA compares: the same voxel positions of both maps (``cka_mode="voxels"``) or pooled maps.

        Args:
            teacher_features: f_T, (B, F_T, *spatial).
            student_features: f_S, (B, F_S, *spatial), same B and spatial size.

        Returns:
            ``(rows_t, rows_s)`` of shapes (K, F_T) and (K, F_S): K = min(``cka_num_voxels``, B * N) voxels, or
            K = B pooled samples.

        Raises:
            ValueError: the maps differ in batch or spatial size.
        """
        if teacher_features.shape[0] != student_features.shape[0] or (
            teacher_features.shape[2:] != student_features.shape[2:]
        ):
            raise ValueError(
                f"teacher features {tuple(teacher_features.shape)} and student features "
                f"{tuple(student_features.shape)} must share the batch and spatial size; resample the reprogrammed "
                "teacher map to the student's feature-map size (ReprogrammingNet(..., dense=True) with spatial_size)."
            )
        if self.cka_mode == "pooled":
            return teacher_features.flatten(2).mean(2), student_features.flatten(2).mean(2)
        rows_t, rows_s = _voxel_rows(teacher_features), _voxel_rows(student_features)
        n = rows_s.shape[0]
        if n <= self.cka_num_voxels:
            return rows_t, rows_s
        idx = self._positions(n).to(rows_s.device)
        return rows_t[idx], rows_s[idx]

    def kd_term(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The voxel-wise KD term: :attr:`kd` on the (B * N, C) voxel logits of two branches (B, C, *spatial).

        Raises:
            ValueError: the two branches' logits differ in shape.
        """
        student_logits, teacher_logits = _as_plain(student_logits), _as_plain(teacher_logits)
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher-branch logits "
                f"{tuple(teacher_logits.shape)} differ; both must come from the shared head at the same size."
            )
        return self.kd(_voxel_rows(student_logits), _voxel_rows(teacher_logits))

    def cka_term(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """``1 - CKA`` on the rows :meth:`sample_voxels` draws from two maps (B, F, *spatial) of one size."""
        rows_t, rows_s = self.sample_voxels(_as_plain(teacher_features), _as_plain(student_features))
        return self.cka(rows_t, rows_s)

    def _positions(self, n: int) -> torch.Tensor:
        """``cka_num_voxels`` distinct positions in [0, n), from the CPU generator (the same on any device)."""
        k = self.cka_num_voxels
        if n <= 16 * k:
            return torch.randperm(n, generator=self.generator)[:k]
        # a full permutation of a 3D batch (millions of voxels) costs ~0.2 s; redrawing the rare repeats is cheap
        idx = torch.randint(n, (k,), generator=self.generator).unique()
        while idx.numel() < k:
            extra = torch.randint(n, (k - idx.numel(),), generator=self.generator)
            idx = torch.cat([idx, extra]).unique()
        return idx
