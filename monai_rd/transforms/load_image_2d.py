"""Load any image a clinician has (PNG/JPEG/BMP/TIFF, DICOM, NIfTI) as one 2D, channel-first image.

A drop-in replacement for the bundles' loading step
``LoadImaged(keys="image", reader=PILReader(converter=convert_to_displayed_mode), image_only=True,
ensure_channel_first=True)``:

- PNG, JPEG, BMP, TIFF (8 or 16 bit), NumPy and anything else MONAI reads: loaded exactly by that ``LoadImage``.
- DICOM (by its ``.dcm``/``.dicom`` name or its ``DICM`` marker, so extension-less exports count):
  :class:`~monai_rd.data.DicomDisplayReader`, the image a viewer shows (Modality LUT, window, MONOCHROME1, RGB)
  of one frame (the middle one of a multi-frame file unless ``frame`` is set).
- A 3D volume (NIfTI, NRRD, ...): reduced to 2D by one slice along ``slice_axis`` (the middle one unless
  ``slice_index`` is set) or by a ``projection`` (``"max"``, ``"mean"``) along it; a volume with one slice is
  simply squeezed. Four or more dimensions, or a volume with several channels/time points, stop with an error
  naming the file.

A bundle config uses it as::

    {"_target_": "monai_rd.transforms.LoadImage2Dd", "keys": "image", "frame": null, "window": "file"}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import MetaTensor, PILReader
from monai.data.utils import to_affine_nd
from monai.transforms import LoadImage, MapTransform, SqueezeDim, Transform
from monai.utils import ImageMetaKey, MetaKeys

from monai_rd.data.dicom_reader import WINDOW_FROM_FILE, DicomDisplayReader, is_dicom_file
from monai_rd.data.pil_modes import convert_to_displayed_mode
from monai_rd.errors import DataCheckError, OptionError
from monai_rd.utils.options import as_int, as_optional_int

__all__ = ["PROJECTIONS", "LoadImage2D", "LoadImage2Dd"]

logger = logging.getLogger(__name__)

PROJECTIONS = ("max", "mean")


class LoadImage2D(Transform):
    """A file -> its 2D image, channel first: ``(1, W, H)`` gray or ``(3, W, H)`` RGB, float32, as a ``MetaTensor``.

    Axis order is MONAI's (``W, H``, as ``PILReader`` gives PNGs), for every format.

    Args:
        frame: the frame of a multi-frame DICOM file (negative counts from the end); None: the middle one.
        window: DICOM VOI window: ``"file"`` (the file's own, the default), ``"none"``, or ``[center, width]`` in the
            units after the Modality LUT (HU for CT). See :func:`monai_rd.data.parse_window`.
        slice_axis: the spatial axis of a 3D volume (0, 1, 2, or negative) along which it is sliced or projected;
            default the last (the axial one of a NIfTI in RAS order).
        slice_index: which slice along ``slice_axis`` (negative counts from the end); None: the middle one.
        projection: ``"max"`` or ``"mean"`` projection along ``slice_axis`` instead of one slice; None: a slice.
        dtype: the output dtype.

    Raises:
        OptionError: an option has a value it cannot take (named), or both ``slice_index`` and ``projection`` are
            set.
    """

    def __init__(
        self,
        frame: int | None = None,
        window: str | Sequence[float] | None = WINDOW_FROM_FILE,
        slice_axis: int = -1,
        slice_index: int | None = None,
        projection: str | None = None,
        dtype: DtypeLike = np.float32,
    ) -> None:
        axis = as_int(slice_axis, "slice_axis")
        if not -3 <= axis < 3:
            raise OptionError(
                f"--slice_axis must be a spatial axis of a 3D volume: 0, 1, 2 (or -3..-1), got {slice_axis!r}."
            )
        self.slice_axis = axis % 3
        self.slice_index = as_optional_int(slice_index, "slice_index")
        if isinstance(projection, str) and projection.strip().lower() in ("none", "null", ""):
            projection = None
        if projection is not None and projection not in PROJECTIONS:
            raise OptionError(f"--projection must be one of {list(PROJECTIONS)} or none, got {projection!r}.")
        if projection is not None and self.slice_index is not None:
            raise OptionError(
                f"--slice_index {self.slice_index} and --projection {projection} both choose how a volume becomes 2D: "
                "set one of them."
            )
        self.projection = projection
        self.dicom_reader = DicomDisplayReader(frame=as_optional_int(frame, "frame"), window=window)
        self.dicom_loader = LoadImage(reader=self.dicom_reader, image_only=True, ensure_channel_first=True, dtype=dtype)
        # what the recipes load PNG/JPEG with, so those images load exactly as before
        pil = PILReader(converter=convert_to_displayed_mode)
        self.loader = LoadImage(reader=pil, image_only=True, ensure_channel_first=True, dtype=dtype)
        self._logged_volume = False

    def __call__(self, filename: PathLike) -> MetaTensor:
        """
        Args:
            filename: the image file.

        Returns:
            ``(C, W, H)`` with C = 1 (gray) or 3 (RGB; other channel counts pass through for the pipeline's checks),
            with the metadata every format shares: ``filename_or_obj``, ``affine`` (4x4), ``original_affine``,
            ``spatial_shape`` (the 2D shape) and ``original_channel_dim``.

        Raises:
            DataCheckError: the file is a 4D image, a volume with several channels or time points, or a DICOM frame
                that does not exist (each names the file and what to do).
            RuntimeError: no reader can read the file (MONAI's message, naming it).
        """
        path = os.fspath(filename)
        if is_dicom_file(path):
            # the reader given at call time is used alone: no fallback to MONAI's plain DICOM readers
            img = self.dicom_loader(path, reader=self.dicom_reader)
        else:
            img = self.loader(path)
        img = self._to_2d(img, path)
        # the same metadata keys for every format (each reader adds its own), so a batch mixing formats collates
        meta = {
            ImageMetaKey.FILENAME_OR_OBJ: img.meta.get(ImageMetaKey.FILENAME_OR_OBJ, path),
            MetaKeys.AFFINE: img.affine,
            MetaKeys.ORIGINAL_AFFINE: np.asarray(img.meta.get(MetaKeys.ORIGINAL_AFFINE, img.affine), dtype=np.float64),
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.shape[1:]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: img.meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM, float("nan")),
        }
        return MetaTensor(img.as_tensor(), meta=meta)

    def _to_2d(self, img: MetaTensor, path: str) -> MetaTensor:
        spatial = img.ndim - 1
        if spatial == 2:
            return img
        if spatial != 3 or img.shape[0] != 1:
            what = (
                f"{spatial} spatial dimensions" if spatial != 3 else f"{img.shape[0]} channels or time points per voxel"
            )
            raise DataCheckError(
                f"{path} has shape {tuple(img.shape)} (channel first): {what}, where the pipeline takes a 2D image or "
                "one 3D volume. Save one volume (e.g. `fslroi in.nii.gz out.nii.gz 0 1` for the first time point) or "
                "a 2D slice, or remove the file."
            )
        sizes = tuple(img.shape[1:])
        dim, n = self.slice_axis + 1, sizes[self.slice_axis]
        if 1 in sizes:  # a 2D image stored as a volume of one slice
            dim, n = sizes.index(1) + 1, 1
        if n == 1:
            reduced = img
        elif self.projection is not None:
            reduced = img.amax(dim=dim, keepdim=True) if self.projection == "max" else img.mean(dim=dim, keepdim=True)
            how = f"its {self.projection} projection along spatial axis {self.slice_axis}"
        else:
            index = n // 2 if self.slice_index is None else self.slice_index
            if not -n <= index < n:
                raise DataCheckError(
                    f"{path} has {n} slices along spatial axis {self.slice_axis} (shape {tuple(img.shape)}), so slice "
                    f"{index} does not exist: choose a slice_index in [{-n}, {n}), or none for the middle one."
                )
            reduced = torch.narrow(img, dim, index % n, 1)
            how = f"slice {index % n} of {n} along spatial axis {self.slice_axis}"
        if n > 1 and not self._logged_volume and self.projection is None and self.slice_index is None:
            self._logged_volume = True
            logger.info(
                f"{path} is a 3D volume {sizes}: using {how} (the middle one); set slice_axis/slice_index or "
                "projection ('max', 'mean') to choose. Other volumes are reduced the same way without a message."
            )
        out = SqueezeDim(dim=dim)(reduced)
        # SqueezeDim leaves a 3x3 affine; MONAI's 2D readers give 4x4, and a batch's affines must agree to collate
        out.affine = to_affine_nd(3, out.affine)
        return out


class LoadImage2Dd(MapTransform):
    """Dictionary version of :class:`LoadImage2D`: each key's file path is replaced by its 2D channel-first image.

    Args:
        keys: keys of the file paths to load.
        frame: see :class:`LoadImage2D`.
        window: see :class:`LoadImage2D`.
        slice_axis: see :class:`LoadImage2D`.
        slice_index: see :class:`LoadImage2D`.
        projection: see :class:`LoadImage2D`.
        dtype: see :class:`LoadImage2D`.
        allow_missing_keys: skip absent keys.

    Raises:
        OptionError: see :class:`LoadImage2D`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        frame: int | None = None,
        window: str | Sequence[float] | None = WINDOW_FROM_FILE,
        slice_axis: int = -1,
        slice_index: int | None = None,
        projection: str | None = None,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage2D(frame, window, slice_axis, slice_index, projection, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
