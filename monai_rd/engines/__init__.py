"""Training engines for Reprogramming Distillation."""

from monai_rd.engines.rd_trainer import RD_OUTPUT_KEYS, RDTrainer

__all__ = ["RDTrainer", "RD_OUTPUT_KEYS"]
