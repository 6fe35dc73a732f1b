"""DIST: distillation by correlation of the predicted distributions, within each sample and within each class."""

from __future__ import annotations

import torch

from monai_rd.losses._logits import LogitPairLoss

__all__ = ["DISTLoss", "pearson_rows"]


def pearson_rows(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` with the same row of ``y``.

    The cosine similarity of the row-centred vectors, with ``eps`` added to the product of the norms, so a
    constant row gives 0, not NaN.

    Args:
        x: (N, D).
        y: (N, D).
        eps: numerical floor of the denominator.

    Returns:
        (N,) correlations in [-1, 1].
    """
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return (x * y).sum(dim=1) / (x.norm(dim=1) * y.norm(dim=1) + eps)


class DISTLoss(LogitPairLoss):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

    ``tau^2 * (beta * L_inter + gamma * L_intra)`` on the predicted distributions ``Y = softmax(z / tau)`` (B, C):

    - inter-class relation: ``L_inter = 1 - mean_i rho(Y_S[i, :], Y_T[i, :])``, the Pearson correlation of each
      sample's class probabilities, averaged over the B samples;
    - intra-class relation: ``L_intra = 1 - mean_c rho(Y_S[:, c], Y_T[:, c])``, the correlation of each class's
      probabilities across the batch, averaged over the C classes.

    Correlation is invariant to shifting and scaling, so the student matches the teacher's ranking and relative
    spread rather than its exact probabilities: the point of DIST for a much stronger teacher. Defaults
    ``beta = gamma = tau = 1`` are those of the authors' code (hunto/image_classification_sota ``dist_kd.py``;
    torchdistill's ``DISTLoss`` has the same), with its ``tau^2`` factor on both terms.
    Their segmentation code (hunto/DIST_KD) uses no temperature and takes a sigmoid on request (``use_sigmoid``).
    At least one CIFAR-100 port (mdistiller style) uses ``beta = gamma = 2``, ``tau = 4``.

    With few classes the inter-class term says little: for C = 2 the centred probabilities of a sample are
    ``(p - 1/2, 1/2 - p)``, whose correlation is the sign agreement ±1, so only the intra-class term trains.
    A batch of one sample leaves the intra-class term constant (1). Neither is NaN.

    Multi-label (``multi_label=True``): ``Y = sigmoid(z / tau)``, each class's probability of being present, as the
    authors' ``use_sigmoid`` option does. Inter-class correlates a sample's findings' probabilities (which findings
    the teacher finds likelier), intra-class correlates one finding's probability across the batch (which images
    are likelier to show it); both are defined for any C >= 2 and any batch of 2 or more, and need no labels.

    Dense outputs: pass voxel rows (B * N, C), as :class:`~monai_rd.losses.DenseRDLoss` does for KD; the
    intra-class term then correlates a class's probability over all voxels of the batch (as DIST_KD's
    segmentation loss does).

    The loss uses no labels, so unlabelled rows take part like any other.

    Args:
        beta: weight of the inter-class term.
        gamma: weight of the intra-class term.
        tau: temperature (> 0).
        detach_teacher: stop gradients into the teacher logits.
        multi_label: per-class sigmoid probabilities instead of one softmax.
        eps: numerical floor of the correlation's denominator.

    Raises:
        ValueError: ``tau`` is not positive.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        detach_teacher: bool = True,
        multi_label: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(tau=tau, detach_teacher=detach_teacher, multi_label=multi_label)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.eps = eps

    def relations(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted inter- and intra-class terms, without ``tau^2``.

        Args:
            input: student logits (B, C).
            target: teacher logits (B, C).

        Returns:
            ``(inter, intra)``, scalar float32 tensors in [0, 2].

        Raises:
            ValueError: the logits are not (B, C), or differ in shape.
        """
        if input.ndim != 2:
            raise ValueError(f"DIST compares logits (B, C); got {tuple(input.shape)}. Pass dense logits as voxel rows.")
        s, t = self.scaled_logits(input, target)
        y_s, y_t = (s.sigmoid(), t.sigmoid()) if self.multi_label else (s.softmax(dim=1), t.softmax(dim=1))
        inter = 1.0 - pearson_rows(y_s, y_t, self.eps).mean()
        intra = 1.0 - pearson_rows(y_s.T, y_t.T, self.eps).mean()
        return inter, intra

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student logits (B, C).
            target: teacher logits (B, C).

        Returns:
            Scalar ``tau^2 * (beta * inter + gamma * intra)``.

        Raises:
            ValueError: the logits are not (B, C) or differ in shape.
        """
        inter, intra = self.relations(input, target)
        return self.tau**2 * (self.beta * inter + self.gamma * intra)
