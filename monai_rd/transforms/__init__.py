"""MONAI transforms added by monai_rd."""

from monai_rd.transforms.grayscale import ToGrayscale, ToGrayscaled
from monai_rd.transforms.load_image_2d import LoadImage2D, LoadImage2Dd, is_dicom_file

__all__ = ["LoadImage2D", "LoadImage2Dd", "ToGrayscale", "ToGrayscaled", "is_dicom_file"]
