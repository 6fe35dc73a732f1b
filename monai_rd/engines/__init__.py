"""Training engines for Reprogramming Distillation."""

from monai_rd.engines.dense_rd_trainer import DenseRDTrainer
from monai_rd.engines.rd_trainer import RD_OUTPUT_KEYS, RDTrainer
from monai_rd.engines.teacher_adaptation import adapt_teacher

__all__ = ["DenseRDTrainer", "RDTrainer", "RD_OUTPUT_KEYS", "adapt_teacher"]
