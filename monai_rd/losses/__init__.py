"""Losses of Reprogramming Distillation."""

from monai_rd.losses.cka import CKALoss, cka, hsic, linear_cka
from monai_rd.losses.distill_kl import DistillKLLoss
from monai_rd.losses.rd import RDLoss

__all__ = ["CKALoss", "DistillKLLoss", "RDLoss", "cka", "hsic", "linear_cka"]
