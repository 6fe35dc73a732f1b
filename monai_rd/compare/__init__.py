"""Compare RD with its ablations and the classic baselines on a bundle's own data: ``python -m monai_rd.compare``."""

from monai_rd.compare.methods import METHODS, Method, as_method, create_feature_loss, distill_weight, method_spec, teacher_lr

__all__ = ["METHODS", "Method", "as_method", "create_feature_loss", "distill_weight", "method_spec", "teacher_lr"]
