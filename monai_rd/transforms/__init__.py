"""MONAI transforms added by monai_rd."""

from monai_rd.transforms.grayscale import ToGrayscale, ToGrayscaled
from monai_rd.transforms.load_image_2d import LoadImage2D, LoadImage2Dd
from monai_rd.transforms.load_volume import LoadVolume, LoadVolumed

__all__ = ["LoadImage2D", "LoadImage2Dd", "LoadVolume", "LoadVolumed", "ToGrayscale", "ToGrayscaled"]
