"""Load a 3D volume (NIfTI, NRRD, ...) channel first, refusing files that are not one single-channel volume.

The 3D counterpart of :class:`~monai_rd.transforms.LoadImage2Dd` for the classification recipe with
``spatial_dims=3``: MONAI's ``LoadImaged(image_only=True, ensure_channel_first=True)`` with the check that the
result is ``(1, X, Y, Z)``, and the plain loader exposed as ``.loader`` (what ``monai_rd.data.check_datalist`` reads
every file with before training). A bundle config uses it as::

    {"_target_": "monai_rd.transforms.LoadVolumed", "keys": "image"}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.transforms import LoadImage, MapTransform, Transform

from monai_rd.errors import DataCheckError

__all__ = ["LoadVolume", "LoadVolumed"]


class LoadVolume(Transform):
    """A file -> its volume ``(1, X, Y, Z)``, float32, as a ``MetaTensor`` (MONAI's axis order and affine).

    Args:
        dtype: output data type.

    Raises:
        DataCheckError: (on call) the file holds no 3D single-channel volume (names the file and its shape).
    """

    def __init__(self, dtype: DtypeLike = np.float32) -> None:
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)

    def __call__(self, path: PathLike) -> Any:
        """
        Args:
            path: the volume's file.

        Returns:
            (1, X, Y, Z) ``MetaTensor``.
        """
        img = self.loader(path)
        if img.ndim != 4 or img.shape[0] != 1:
            raise DataCheckError(
                f"{path}: expected one single-channel 3D volume, got shape {tuple(img.shape)} (channel first); "
                "give 3D single-channel files (NIfTI, NRRD, ...)."
            )
        return img


class LoadVolumed(MapTransform):
    """Dictionary version of :class:`LoadVolume`: replaces each key's file path by its volume.

    Args:
        keys: keys holding file paths.
        dtype: output data type.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, dtype: DtypeLike = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
