"""Ignite/MONAI handlers added by monai_rd."""

from monai_rd.handlers.metrics_json import MetricsJSONWriter, to_jsonable
from monai_rd.handlers.output_transforms import loss_terms_from_engine, stacked_from_engine
from monai_rd.handlers.training_curve import TrainingCurvePlotter

__all__ = ["MetricsJSONWriter", "TrainingCurvePlotter", "loss_terms_from_engine", "stacked_from_engine", "to_jsonable"]
