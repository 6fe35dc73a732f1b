"""Datasets and datalists."""

from monai_rd.data.busi import BUSI_CLASSES, busi_datalist
from monai_rd.data.btc import BTC_CLASSES, btc_datalist
from monai_rd.data.chestxray14 import CHESTXRAY14_FINDINGS, chestxray14_datalist
from monai_rd.data.covid_ct import COVID_CT_CLASSES, covid_ct_datalist
from monai_rd.data.decathlon import decathlon_datalist
from monai_rd.data.isic2018 import ISIC2018_CLASSES, isic2018_datalist
from monai_rd.data.feature_cache import (
    CachedTeacherFeaturesd,
    RandCachedTeacherFeaturesd,
    TeacherFeatureCache,
    file_sha256,
    normalise_path,
)
from monai_rd.data.datalist import (
    list_class_folder,
    list_images,
    list_volumes,
    make_class_folder_datalist,
    split_datalist,
    write_json_atomic,
)
from monai_rd.data.pil_modes import convert_to_displayed_mode
from monai_rd.data.checks import check_datalist, check_writable, default_image_loader
from monai_rd.data.datalist import load_json, read_groups_csv
from monai_rd.data.dicom_reader import DicomDisplayReader, parse_window
from monai_rd.data.unlabelled import UNLABELLED, UNLABELLED_SPLIT, training_items, unlabelled_splits

__all__ = [
    "UNLABELLED",
    "UNLABELLED_SPLIT",
    "training_items",
    "unlabelled_splits",
    "CachedTeacherFeaturesd",
    "RandCachedTeacherFeaturesd",
    "TeacherFeatureCache",
    "file_sha256",
    "normalise_path",
    "BUSI_CLASSES",
    "busi_datalist",
    "BTC_CLASSES",
    "btc_datalist",
    "CHESTXRAY14_FINDINGS",
    "chestxray14_datalist",
    "COVID_CT_CLASSES",
    "covid_ct_datalist",
    "decathlon_datalist",
    "ISIC2018_CLASSES",
    "isic2018_datalist",
    "list_class_folder",
    "list_images",
    "list_volumes",
    "make_class_folder_datalist",
    "split_datalist",
    "write_json_atomic",
    "check_datalist",
    "check_writable",
    "convert_to_displayed_mode",
    "default_image_loader",
    "load_json",
    "read_groups_csv",
    "DicomDisplayReader",
    "parse_window",
]
