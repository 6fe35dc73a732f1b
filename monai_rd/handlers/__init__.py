"""Ignite/MONAI handlers added by monai_rd."""

from monai_rd.handlers.checkpoint_saver import BestModelSaver, CrashSafeCheckpointSaver
from monai_rd.handlers.inference_report import InferenceReport
from monai_rd.handlers.loss_weight_schedule import LinearLossWeight
from monai_rd.handlers.metrics_from_evaluator import MetricsFromEvaluator
from monai_rd.handlers.metrics_json import MetricsJSONWriter, to_jsonable
from monai_rd.handlers.non_finite_guard import NonFiniteGuard
from monai_rd.handlers.output_transforms import loss_terms_from_engine, stacked_from_engine
from monai_rd.handlers.predictions_csv import PredictionsCSVSaver
from monai_rd.handlers.run_checkpoints import RunCheckpoints
from monai_rd.handlers.run_state import RunState, data_digest
from monai_rd.handlers.task_metrics import classification_metrics, segmentation_metrics
from monai_rd.handlers.training_curve import TrainingCurvePlotter

__all__ = [
    "BestModelSaver",
    "CrashSafeCheckpointSaver",
    "InferenceReport",
    "LinearLossWeight",
    "MetricsFromEvaluator",
    "MetricsJSONWriter",
    "NonFiniteGuard",
    "PredictionsCSVSaver",
    "RunCheckpoints",
    "RunState",
    "TrainingCurvePlotter",
    "classification_metrics",
    "data_digest",
    "loss_terms_from_engine",
    "segmentation_metrics",
    "stacked_from_engine",
    "to_jsonable",
]
