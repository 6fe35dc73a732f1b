"""Datalists, their checks, image readers and the teacher-feature cache."""

from monai_rd.data.checks import check_datalist, check_writable, default_image_loader
from monai_rd.data.datalist import (
    list_class_folder,
    load_json,
    make_class_folder_datalist,
    read_groups_csv,
    split_datalist,
)
from monai_rd.data.dicom_reader import DicomDisplayReader, is_dicom_file, parse_window
from monai_rd.data.feature_cache import (
    CachedTeacherFeaturesd,
    RandCachedTeacherFeaturesd,
    TeacherFeatureCache,
    normalise_path,
)
from monai_rd.data.finder import FoundFiles, find_images, find_volumes, list_images, list_volumes
from monai_rd.data.pil_modes import convert_to_displayed_mode
from monai_rd.data.unlabelled import training_items, unlabelled_splits

__all__ = [
    "CachedTeacherFeaturesd",
    "DicomDisplayReader",
    "FoundFiles",
    "RandCachedTeacherFeaturesd",
    "TeacherFeatureCache",
    "check_datalist",
    "check_writable",
    "convert_to_displayed_mode",
    "default_image_loader",
    "find_images",
    "find_volumes",
    "is_dicom_file",
    "list_class_folder",
    "list_images",
    "list_volumes",
    "load_json",
    "make_class_folder_datalist",
    "normalise_path",
    "parse_window",
    "read_groups_csv",
    "split_datalist",
    "training_items",
    "unlabelled_splits",
]
