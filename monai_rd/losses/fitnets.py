"""FitNets hint loss: a learned projection of the student's feature map regressed onto the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch.nn.modules.loss import _Loss

from monai_rd.losses._feature_maps import check_pair, pool_to

__all__ = ["FitNetsLoss"]


class FitNetsLoss(_Loss):
    """FitNets hint (Romero et al., ICLR 2015): ``mean((r(F_S) - F_T)^2)``.

    ``r`` is the *regressor*, a trainable 1x1 convolution from the student's ``C_S`` channels to the teacher's
    ``C_T``, trained with the student (so its parameters must be in the optimizer). The teacher's map is
    resampled to the student's grid by adaptive average pooling (area means when the teacher's grid is finer,
    which it is for a 7x7 teacher map and a ResNet18 at 64 px: 2x2) and never receives a gradient. The paper
    trains the hint in a first stage; here, as in the common single-stage benchmarks (e.g. Tian et al.'s
    RepDistiller, weight 100), the hint is added to the task loss for the whole run.

    Args:
        student_channels: channels C_S of the student's feature map.
        teacher_channels: channels C_T of the teacher's feature map.
        spatial_dims: 2 or 3.
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.regressor = Conv[Conv.CONV, spatial_dims](student_channels, teacher_channels, kernel_size=1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: student feature map (B, C_S, *spatial_S).
            target: teacher feature map (B, C_T, *spatial_T).

        Returns:
            Scalar mean squared error over the batch, channels and the student's grid (float32).

        Raises:
            ValueError: mismatched batch sizes, or vector features on either side.
        """
        check_pair(input, target, "FitNetsLoss", maps=True)
        hint = self.regressor(input).float()
        return F.mse_loss(hint, pool_to(target.detach().float(), hint.shape[2:]))
