"""Centered Kernel Alignment (CKA) loss between two batches of features."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["CKALoss", "cka", "linear_cka", "hsic"]

_KERNELS = ("linear", "rbf")
_ESTIMATORS = ("biased", "unbiased")


def _check_features(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2 or y.ndim < 2:
        raise ValueError(
            f"CKA expects batch feature matrices (B, D); got shapes {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"CKA needs the same number of samples in both inputs; got batch sizes {x.shape[0]} and {y.shape[0]}."
        )
    # flatten any trailing dims so maps (B, C, H, W) are compared as vectors
    return x.reshape(x.shape[0], -1).float(), y.reshape(y.shape[0], -1).float()


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Linear CKA of Kornblith et al. (2019) in feature space.

    ``||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)`` after centring the columns.

    Args:
        x: features (B, D1).
        y: features (B, D2).
        eps: added to the denominator so constant features give 0, not NaN.

    Returns:
        Scalar tensor in [0, 1] (float32).
    """
    x, y = _check_features(x, y)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    # Gram form (B x B) is cheaper than D x D when D > B, as is typical for deep features
    if x.shape[1] > x.shape[0] or y.shape[1] > y.shape[0]:
        kx, ky = x @ x.T, y @ y.T
        num = (kx * ky).sum()
        den = torch.linalg.norm(kx) * torch.linalg.norm(ky)
    else:
        num = torch.linalg.norm(y.T @ x) ** 2
        den = torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y)
    return num / (den + eps)


def _rbf_gram(x: torch.Tensor, sigma_frac: float) -> torch.Tensor:
    d2 = torch.cdist(x, x).pow(2)
    # bandwidth: a fraction of the median non-zero pairwise distance, as in Kornblith et al.
    off = d2[~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)]
    med = off.detach().median().clamp_min(1e-12) if off.numel() else d2.new_tensor(1.0)
    return torch.exp(-d2 / (2.0 * (sigma_frac**2) * med))


def hsic(k: torch.Tensor, l: torch.Tensor, estimator: str = "biased") -> torch.Tensor:  # noqa: E741
    """HSIC between two (B, B) Gram matrices.

    Args:
        k: Gram matrix of the first features (B, B).
        l: Gram matrix of the second features (B, B).
        estimator: ``"biased"`` (Gretton et al. 2005) or ``"unbiased"`` (Song et al. 2012, the minibatch
            estimator of Nguyen et al. 2020; needs B >= 4).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: unknown estimator, or fewer than 4 samples for the unbiased estimator.
    """
    n = k.shape[0]
    if estimator == "biased":
        h = torch.eye(n, device=k.device, dtype=k.dtype) - 1.0 / n
        # tr(K H L H), L symmetric
        return ((h @ k @ h) * l).sum() / (n - 1) ** 2
    if estimator == "unbiased":
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}.")
        eye = torch.eye(n, device=k.device, dtype=torch.bool)
        kt, lt = k.masked_fill(eye, 0.0), l.masked_fill(eye, 0.0)
        term1 = (kt * lt.T).sum()
        term2 = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
        term3 = 2.0 * (kt.sum(0) * lt.sum(1)).sum() / (n - 2)
        return (term1 + term2 - term3) / (n * (n - 3))
    raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}.")


def cka(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "linear",
    estimator: str = "biased",
    sigma_frac: float = 0.8,
    eps: float = 1e-8,
) -> torch.Tensor:
    """CKA between two batches of features with a linear or RBF kernel.

    Args:
        x: features (B, D1); extra trailing dims are flattened.
        y: features (B, D2).
        kernel: ``"linear"`` or ``"rbf"``.
        estimator: HSIC estimator, ``"biased"`` or ``"unbiased"``.
        sigma_frac: RBF bandwidth as a fraction of the median pairwise distance.
        eps: numerical floor of the denominator.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: unknown kernel or estimator, or mismatched batch sizes.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}.")
    if kernel == "linear" and estimator == "biased":
        return linear_cka(x, y, eps=eps)
    x, y = _check_features(x, y)
    if kernel == "linear":
        kx, ky = x @ x.T, y @ y.T
    else:
        kx, ky = _rbf_gram(x, sigma_frac), _rbf_gram(y, sigma_frac)
    num = hsic(kx, ky, estimator)
    den = torch.sqrt((hsic(kx, kx, estimator) * hsic(ky, ky, estimator)).clamp_min(0.0))
    return num / (den + eps)


class CKALoss(_Loss):
    """``1 - CKA(z_t, z_s)``: aligns the batch feature geometry of two branches.

    Computed in float32 with autocast disabled, since the Gram products overflow or lose precision in half
    precision. A batch too small for the estimator (fewer than 2 samples, or 4 for ``"unbiased"``) gives a
    zero loss that stays connected to the graph, never NaN.

    Args:
        kernel: ``"linear"`` (default) or ``"rbf"``.
        estimator: ``"biased"`` (default) or ``"unbiased"`` minibatch HSIC (Nguyen et al. 2020).
        sigma_frac: RBF bandwidth as a fraction of the median pairwise distance.
        eps: numerical floor of the denominator.

    Example:
        >>> loss = CKALoss()(torch.randn(8, 32), torch.randn(8, 16))
    """

    def __init__(
        self, kernel: str = "linear", estimator: str = "biased", sigma_frac: float = 0.8, eps: float = 1e-8
    ) -> None:
        super().__init__(reduction=LossReduction.MEAN.value)
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}.")
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}.")
        self.kernel = kernel
        self.estimator = estimator
        self.sigma_frac = sigma_frac
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: features of one branch (B, D1), e.g. the reprogrammed teacher features z_T.
            target: features of the other branch (B, D2), e.g. the student features z_S.

        Returns:
            Scalar tensor ``1 - CKA``.
        """
        min_n = 4 if self.estimator == "unbiased" else 2
        if input.shape[0] < min_n:
            return (input.sum() + target.sum()).float() * 0.0
        device_type = input.device.type if input.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            value = cka(input, target, self.kernel, self.estimator, self.sigma_frac, self.eps)
        return 1.0 - value
