"""Losses of Reprogramming Distillation."""

from monai_rd.losses._logits import standardise_logits
from monai_rd.losses.attention_transfer import AttentionTransferLoss, attention_map
from monai_rd.losses.cka import CKALoss, cka, hsic, linear_cka
from monai_rd.losses.crd import ContrastiveRepresentationLoss
from monai_rd.losses.decoupled_kd import DecoupledKDLoss
from monai_rd.losses.dense_rd import DenseRDLoss
from monai_rd.losses.dist_kd import DISTLoss, pearson_rows
from monai_rd.losses.distill_kl import DistillKLLoss, binary_kl
from monai_rd.losses.drd import DenseDRDLoss, DRDLoss
from monai_rd.losses.fitnets import FitNetsLoss
from monai_rd.losses.rd import RDLoss
from monai_rd.losses.similarity_preserving import SimilarityPreservingLoss, similarity_matrix

__all__ = [
    "AttentionTransferLoss",
    "CKALoss",
    "ContrastiveRepresentationLoss",
    "DISTLoss",
    "DRDLoss",
    "DecoupledKDLoss",
    "DenseDRDLoss",
    "DenseRDLoss",
    "DistillKLLoss",
    "FitNetsLoss",
    "RDLoss",
    "SimilarityPreservingLoss",
    "attention_map",
    "binary_kl",
    "cka",
    "hsic",
    "linear_cka",
    "pearson_rows",
    "similarity_matrix",
    "standardise_logits",
]
