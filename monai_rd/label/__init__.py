"""MONAI Label serving and training of RD bundles' deployed students (``pip install -e ".[label]"``).

Importing this package needs ``monailabel`` (the ``label`` extra); the rest of monai_rd does not.
"""

from monai_rd.label.app import IMAGE_PATTERNS, RDLabelApp
from monai_rd.label.class_labels import CLASS_KEY, class_index, labelled_datalist, read_class_label
from monai_rd.label.infer_task import RDClassifyInferTask, RDInferTask
from monai_rd.label.segment_infer_task import RDSegmentInferTask
from monai_rd.label.served_model import MODEL_FILE, ServedStudent, check_model_file, publish_model
from monai_rd.label.train_task import RDTrainTask

__all__ = [
    "CLASS_KEY",
    "IMAGE_PATTERNS",
    "MODEL_FILE",
    "RDClassifyInferTask",
    "RDInferTask",
    "RDLabelApp",
    "RDSegmentInferTask",
    "RDTrainTask",
    "ServedStudent",
    "check_model_file",
    "class_index",
    "labelled_datalist",
    "publish_model",
    "read_class_label",
]
