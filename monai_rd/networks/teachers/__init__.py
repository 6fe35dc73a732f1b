"""Foundation-model teachers."""

from monai_rd.networks.teachers.efficientnet_lite import efficientnet_lite0_teacher
from monai_rd.networks.teachers.registry import (
    TeacherSpec,
    create_teacher,
    get_teacher_spec,
    list_teacher_prefixes,
    list_teachers,
    register_teacher,
)

__all__ = [
    "TeacherSpec",
    "create_teacher",
    "efficientnet_lite0_teacher",
    "get_teacher_spec",
    "list_teacher_prefixes",
    "list_teachers",
    "register_teacher",
]
