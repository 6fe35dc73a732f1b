"""MONAI Label serving and training of RD bundles' deployed students (``pip install -e ".[label]"``).

Importing this package needs ``monailabel`` (the ``label`` extra); the rest of monai_rd does not.
See ``docs/label.md``.
"""

from monai_rd.label.active_learning import EntropyScoring, EntropyStrategy, mean_entropy, score_key
from monai_rd.label.app import RDLabelApp
from monai_rd.label.batch_infer import RDBatchInferTask
from monai_rd.label.class_labels import CLASS_KEY, class_index, label_class, labelled_datalist, read_class_label
from monai_rd.label.datastore import IMAGE_PATTERNS, LABEL_EXTENSIONS, RDDatastore, RDSessions, check_name
from monai_rd.label.http_errors import MissingModelError, http_error, refusal
from monai_rd.label.infer_task import RDClassifyInferTask, RDInferTask
from monai_rd.label.mask_labels import LABEL_MAP_EXTENSIONS, conform_label_map, is_label_map, mask_datalist
from monai_rd.label.model_score import validation_score
from monai_rd.label.redaction import PathRedactor, redacted_output
from monai_rd.label.segment_infer_task import RDSegmentInferTask
from monai_rd.label.segment_train_task import RDSegmentTrainTask
from monai_rd.label.served_model import MODEL_FILE, ServedStudent, check_model_file, prune_folders, publish_model
from monai_rd.label.train_stats import TrainStatsWriter
from monai_rd.label.train_task import RUNS_FOLDER, TRAIN_STATS_FILE, RDTrainTask
from monai_rd.label.uploads import UploadFolder

__all__ = [
    "CLASS_KEY",
    "IMAGE_PATTERNS",
    "LABEL_EXTENSIONS",
    "LABEL_MAP_EXTENSIONS",
    "MODEL_FILE",
    "RUNS_FOLDER",
    "TRAIN_STATS_FILE",
    "EntropyScoring",
    "EntropyStrategy",
    "MissingModelError",
    "PathRedactor",
    "RDBatchInferTask",
    "RDClassifyInferTask",
    "RDDatastore",
    "RDInferTask",
    "RDLabelApp",
    "RDSegmentInferTask",
    "RDSegmentTrainTask",
    "RDSessions",
    "RDTrainTask",
    "ServedStudent",
    "TrainStatsWriter",
    "UploadFolder",
    "check_model_file",
    "check_name",
    "class_index",
    "conform_label_map",
    "http_error",
    "is_label_map",
    "label_class",
    "labelled_datalist",
    "mask_datalist",
    "mean_entropy",
    "prune_folders",
    "publish_model",
    "read_class_label",
    "redacted_output",
    "refusal",
    "score_key",
    "validation_score",
]
