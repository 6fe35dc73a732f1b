"""Training engines: one MONAI trainer class per training scheme, and the stages that run before them."""

from monai_rd.engines.dense_rd_trainer import DenseRDTrainer
from monai_rd.engines.distillation_trainer import DistillationTrainer
from monai_rd.engines.drd_trainer import DenseDRDTrainer, DRDTrainer
from monai_rd.engines.feature_kd_trainer import FeatureKDTrainer
from monai_rd.engines.kd_trainer import KDTrainer
from monai_rd.engines.rd_trainer import RDTrainer
from monai_rd.engines.reprogramming_trainer import ReprogrammingTrainer
from monai_rd.engines.teacher_adaptation import adapt_teacher
from monai_rd.engines.teacher_features import TeacherFeatureSource

__all__ = [
    "DRDTrainer",
    "DenseDRDTrainer",
    "DenseRDTrainer",
    "DistillationTrainer",
    "FeatureKDTrainer",
    "KDTrainer",
    "RDTrainer",
    "ReprogrammingTrainer",
    "TeacherFeatureSource",
    "adapt_teacher",
]
