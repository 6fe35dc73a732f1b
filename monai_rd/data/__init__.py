"""Datasets and datalists."""

from monai_rd.data.busi import BUSI_CLASSES, busi_datalist
from monai_rd.data.feature_cache import CachedTeacherFeaturesd, TeacherFeatureCache, file_sha256
from monai_rd.data.datalist import list_class_folder, make_class_folder_datalist, split_datalist, write_json_atomic

__all__ = [
    "CachedTeacherFeaturesd",
    "TeacherFeatureCache",
    "file_sha256",
    "BUSI_CLASSES",
    "busi_datalist",
    "list_class_folder",
    "make_class_folder_datalist",
    "split_datalist",
    "write_json_atomic",
]
