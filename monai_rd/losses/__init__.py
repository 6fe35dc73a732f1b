"""Losses of Reprogramming Distillation."""

from monai_rd.losses.attention_transfer import AttentionTransferLoss, attention_map
from monai_rd.losses.cka import CKALoss, cka, hsic, linear_cka
from monai_rd.losses.crd import ContrastiveRepresentationLoss
from monai_rd.losses.dense_rd import DenseRDLoss
from monai_rd.losses.distill_kl import DistillKLLoss
from monai_rd.losses.fitnets import FitNetsLoss
from monai_rd.losses.rd import RDLoss
from monai_rd.losses.similarity_preserving import SimilarityPreservingLoss, similarity_matrix

__all__ = [
    "AttentionTransferLoss",
    "CKALoss",
    "ContrastiveRepresentationLoss",
    "DenseRDLoss",
    "DistillKLLoss",
    "FitNetsLoss",
    "RDLoss",
    "SimilarityPreservingLoss",
    "attention_map",
    "cka",
    "hsic",
    "linear_cka",
    "similarity_matrix",
]
