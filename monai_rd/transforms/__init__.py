"""MONAI transforms added by monai_rd."""

from monai_rd.transforms.grayscale import ToGrayscale, ToGrayscaled

__all__ = ["ToGrayscale", "ToGrayscaled"]
