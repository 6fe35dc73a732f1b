"""Ignite/MONAI handlers added by monai_rd."""

from monai_rd.handlers.checkpoint_saver import CrashSafeCheckpointSaver
from monai_rd.handlers.metrics_from_evaluator import MetricsFromEvaluator
from monai_rd.handlers.metrics_json import MetricsJSONWriter, to_jsonable
from monai_rd.handlers.output_transforms import loss_terms_from_engine, stacked_from_engine
from monai_rd.handlers.predictions_csv import PredictionsCSVSaver
from monai_rd.handlers.run_state import RunState, data_digest
from monai_rd.handlers.training_curve import TrainingCurvePlotter

__all__ = [
    "CrashSafeCheckpointSaver",
    "MetricsFromEvaluator",
    "MetricsJSONWriter",
    "PredictionsCSVSaver",
    "RunState",
    "TrainingCurvePlotter",
    "data_digest",
    "loss_terms_from_engine",
    "stacked_from_engine",
    "to_jsonable",
]
