"""Networks of Reprogramming Distillation: the frozen teacher, Phi and the deployable student; for Deep RD the
teacher's stage taps, the students' stages and the stage projectors phi_i."""

from monai_rd.networks.adapted_teacher import AdaptedTeacherClassifier
from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.reprogramming import ReprogrammingNet, ResidualMLPBlock
from monai_rd.networks.segmentation_student import (
    SegmentationStudent,
    create_segmentation_backbone,
    list_segmentation_students,
)
from monai_rd.networks.stage_map_teacher import StageMapTeacher
from monai_rd.networks.stage_projector import StageProjector, build_stage_projectors
from monai_rd.networks.student import StudentClassifier, create_backbone, list_students
from monai_rd.networks.teacher_branch import TeacherBranch
from monai_rd.networks.teachers import create_teacher, efficientnet_lite0_teacher, list_teachers
from monai_rd.networks.token_maps import tokens_to_map

__all__ = [
    "AdaptedTeacherClassifier",
    "FrozenTeacher",
    "ReprogrammingNet",
    "ResidualMLPBlock",
    "SegmentationStudent",
    "StageMapTeacher",
    "StageProjector",
    "StudentClassifier",
    "TeacherBranch",
    "build_stage_projectors",
    "create_backbone",
    "create_segmentation_backbone",
    "create_teacher",
    "efficientnet_lite0_teacher",
    "list_segmentation_students",
    "list_students",
    "list_teachers",
    "tokens_to_map",
]
