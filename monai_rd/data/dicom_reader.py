"""A MONAI ``PydicomReader`` that yields the image a DICOM viewer shows, one frame at a time.

MONAI's ``PydicomReader`` hands the stored pixel values to the pipeline, rescaled by ``RescaleSlope``/``Intercept``
only: a MONOCHROME1 radiograph (CR/DX) then loads inverted (bone dark), the file's window is ignored, a palette
ultrasound loads as palette indices, a colour image as three *spatial* dimensions, and a multi-frame file's
frames land on a spatial axis. :class:`DicomDisplayReader` applies the DICOM display pipeline with pydicom's own
functions, in the standard's order (PS3.4 N.2):

1. the frame: one frame of a multi-frame file (the middle one unless ``frame`` is set), decoded alone;
2. the Modality LUT (``pydicom.pixels.apply_modality_lut``): RescaleSlope/Intercept (CT in HU) or a Modality LUT
   Sequence; for enhanced multi-frame files (Enhanced CT/MR) from the frame's functional groups;
3. the VOI LUT (``pydicom.pixels.apply_voi_lut``): the file's first window (Window Center/Width, or its VOI LUT
   Sequence), a configured ``(center, width)``, or none;
4. MONOCHROME1 inverted, so that high values are bright as for MONOCHROME2;
5. colour kept as RGB, channel last: YBR is converted to RGB by pydicom, PALETTE COLOR looked up
   (``pydicom.pixels.apply_color_lut``); the LUTs of steps 2-4 apply to grayscale only.

The result is float32 ``(W, H)`` for grayscale and ``(W, H, 3)`` for colour (MONAI's axis order, as for PNGs read by
``PILReader``), so ``LoadImage(..., ensure_channel_first=True)`` gives ``(1, W, H)`` or ``(3, W, H)``.
:class:`monai_rd.transforms.LoadImage2D` uses this reader for every DICOM file.

pydicom 3 and pydicom 2.4 (which the ``label`` extra installs for MONAI Label) give the same images: with 2.4 the
same LUT functions come from ``pydicom.pixel_data_handlers.util``, and :func:`decoded_pixels` takes the frame and
converts YBR to RGB as pydicom 3 does when decoding.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# pydicom 3, or 2.4 (which MONAI Label 0.8.5 needs: the `label` extra): the same LUT functions in another module.
# This import and decoded_pixels() are the only pydicom-version-specific code; the tests use them too.
try:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, convert_color_space

    _PYDICOM2 = False
except ImportError:
    from pydicom.pixel_data_handlers.util import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        apply_windowing,
        convert_color_space,
    )

    _PYDICOM2 = True

from monai.config import PathLike
from monai.data import PydicomReader
from monai.data.utils import affine_to_spacing
from monai.utils import MetaKeys, ensure_tuple

from monai_rd.errors import DataCheckError, OptionError

__all__ = [
    "DICOM_EXTENSIONS",
    "DicomDisplayReader",
    "apply_color_lut",
    "apply_modality_lut",
    "apply_voi_lut",
    "apply_windowing",
    "convert_color_space",
    "decoded_pixels",
    "is_dicom_file",
    "parse_window",
]

logger = logging.getLogger(__name__)


def _drop_unusable_nvimgcodec_reader() -> None:
    """Keep MONAI's ``LoadImage`` from registering ``NvImgCodecPydicomReader`` where it cannot work.

    MONAI registers it by default whenever pydicom is installed; without nvImageCodec and CUDA it reads nothing (its
    ``verify_suffix`` is False) and warns each time a ``LoadImage`` is built, i.e. in every bundle on a CPU.
    """
    from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available
    from monai.transforms.io import array as io_array

    if "nvimgcodecpydicomreader" in io_array.SUPPORTED_READERS and not is_nvimgcodec_available():
        del io_array.SUPPORTED_READERS["nvimgcodecpydicomreader"]


_drop_unusable_nvimgcodec_reader()

WINDOW_FROM_FILE = "file"
DICOM_EXTENSIONS = (".dcm", ".dicom")
NO_WINDOW = "none"
_NO_WINDOW_NAMES = ("none", "null", "off", "")
# attributes an enhanced multi-frame file keeps per frame (or shared) in functional groups, not at the top level
_FRAME_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def parse_window(window: Any, name: str = "window") -> str | tuple[float, float]:
    """The VOI window an option asks for: ``"file"``, ``"none"``, or ``(center, width)``.

    Args:
        window: ``"file"`` (the file's own window), ``"none"``/``None`` (no window: the full range after the
            Modality LUT), or two numbers ``[center, width]`` (a list, or a string ``"40,400"``), in the units after
            the Modality LUT (HU for CT).
        name: the option's name, for the error message.

    Returns:
        ``"file"``, ``"none"`` or ``(center, width)`` as floats.

    Raises:
        OptionError: any other value, or a width below 1 (pydicom's LINEAR windowing needs width >= 1).
    """
    if window is None or (isinstance(window, str) and window.strip().lower() in _NO_WINDOW_NAMES):
        return NO_WINDOW
    if isinstance(window, str) and window.strip().lower() == WINDOW_FROM_FILE:
        return WINDOW_FROM_FILE
    values: Sequence[Any] = window.strip().strip("[]()").split(",") if isinstance(window, str) else window
    try:
        center, width = (float(v) for v in values)
        ok = np.isfinite([center, width]).all() and not any(isinstance(v, bool) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise OptionError(
            f"--{name} must be 'file' (the file's window), 'none', or [center, width] (e.g. [40, 400] for a CT soft "
            f"tissue window in HU), got {window!r}."
        )
    if width < 1:
        raise OptionError(f"--{name} width must be at least 1, got {width} (in {window!r}).")
    return center, width


# the colour spaces pydicom 3 converts to RGB when decoding (``as_rgb``); YBR_RCT/YBR_ICT (JPEG 2000) and RGB come
# out of the decoders as RGB with either version
_YBR_TO_RGB = ("YBR_FULL", "YBR_FULL_422")


def decoded_pixels(ds: Any, index: int | None = None, as_rgb: bool = True) -> np.ndarray:
    """The decoded pixels of a DICOM dataset as pydicom 3 gives them, with pydicom 3 or 2.4.

    pydicom 3 decodes one frame alone and converts YBR_FULL/YBR_FULL_422 to RGB; pydicom 2.4 decodes every frame and
    returns YBR as stored, so here the frame is taken and the colour converted afterwards (the same values).

    Args:
        ds: a ``pydicom.Dataset`` with pixel data.
        index: the frame of a multi-frame dataset (0-based); None: all frames. Ignored for a single-frame dataset.
        as_rgb: convert YBR_FULL/YBR_FULL_422 to RGB (pydicom 3's default); False keeps the stored YBR values.

    Returns:
        ``(rows, columns)`` or ``(rows, columns, samples)`` for one frame; ``(frames, rows, columns[, samples])``
        for all frames of a multi-frame dataset. The stored values (no Modality or VOI LUT).

    Raises:
        Whatever pydicom raises when the data cannot be decoded (e.g. a missing decoder).
    """
    multi_frame = int(ds.get("NumberOfFrames", 1) or 1) > 1
    if not _PYDICOM2:
        ds.pixel_array_options(index=index if multi_frame else None, as_rgb=as_rgb)
        return ds.pixel_array
    arr = ds.pixel_array
    if multi_frame and index is not None:
        arr = arr[index]
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if as_rgb and photometric in _YBR_TO_RGB:
        arr = convert_color_space(arr, photometric, "RGB")
    return arr


def _is_colour(ds: Any) -> bool:
    return int(ds.get("SamplesPerPixel", 1) or 1) > 1 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"


class DicomDisplayReader(PydicomReader):
    """``PydicomReader`` that returns the displayed image of one frame: Modality LUT, VOI window, MONOCHROME1, RGB.

    Args:
        frame: which frame of a multi-frame file to load (negative counts from the end); None: the middle one
            (``n // 2``). Single-frame files ignore it.
        window: ``"file"`` (default: the file's first Window Center/Width or VOI LUT; none if it has neither),
            ``"none"``, or ``(center, width)`` in the units after the Modality LUT (applied with pydicom's LINEAR
            windowing). See :func:`parse_window`.
        kwargs: passed to ``monai.data.PydicomReader`` (e.g. ``swap_ij``, ``affine_lps_to_ras``).

    Raises:
        OptionError: ``frame`` is not an integer or None, or ``window`` is invalid.
    """

    def __init__(self, frame: int | None = None, window: str | Sequence[float] | None = WINDOW_FROM_FILE, **kwargs):
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, numbers.Integral)):
            raise OptionError(f"--frame must be an integer frame index or None (the middle frame), got {frame!r}.")
        super().__init__(**kwargs)
        self.frame = None if frame is None else int(frame)
        self.window = parse_window(window)
        self._logged_middle_frame = False

    def _frame_index(self, num_frames: int, filename: Any) -> int:
        if self.frame is None:
            if not self._logged_middle_frame:
                self._logged_middle_frame = True
                logger.info(
                    f"{filename} has {num_frames} frames: using the middle one ({num_frames // 2}); set --frame to "
                    "choose another. Other multi-frame files are read the same way without a message."
                )
            return num_frames // 2
        if not -num_frames <= self.frame < num_frames:
            raise DataCheckError(
                f"{filename} has {num_frames} frames, so frame {self.frame} does not exist: choose a frame in "
                f"[{-num_frames}, {num_frames}), or none for the middle one."
            )
        return self.frame % num_frames

    @staticmethod
    def _use_frame_groups(ds: Any, index: int) -> None:
        """Copy the frame's rescale and window from an enhanced file's functional groups to the top level, where
        pydicom's LUT functions read them: shared values, then the frame's own; values at the top level win."""
        at_top = {k for keywords in _FRAME_GROUPS.values() for k in keywords if k in ds}
        shared, per_frame = ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")
        groups = ([shared[0]] if shared else []) + ([per_frame[index]] if per_frame and index < len(per_frame) else [])
        for group in groups:
            for seq_name, keywords in _FRAME_GROUPS.items():
                seq = group.get(seq_name)
                for keyword in keywords if seq else ():
                    if keyword in seq[0] and keyword not in at_top:
                        setattr(ds, keyword, seq[0][keyword].value)

    def _get_array_data(self, img, filename):
        """The displayed pixels of ``img`` (a pydicom ``Dataset``): ``(rows, columns)`` float32, or
        ``(rows, columns, 3)`` for colour. Overrides ``PydicomReader``'s stored-values-times-slope version."""
        # the dataset's own path: PydicomReader keeps the last read's names on the (shared, possibly threaded) reader
        filename = getattr(img, "filename", None) or filename
        if "PixelData" not in img and "FloatPixelData" not in img and "DoubleFloatPixelData" not in img:
            kind = getattr(img.get("SOPClassUID"), "name", None) or "no image"
            raise DataCheckError(
                f"{filename} holds no pixel data (it is a {kind} object, not an image): remove it from the data, or "
                "exclude it (e.g. make_datalist --exclude)."
            )
        num_frames = int(img.get("NumberOfFrames", 1) or 1)
        index = self._frame_index(num_frames, filename) if num_frames > 1 else None
        try:
            arr = decoded_pixels(img, index)  # this frame only; YBR converted to RGB
        except Exception as e:  # decoder missing or corrupt data: the file's problem, named with pydicom's reason
            syntax = getattr(getattr(img, "file_meta", None), "TransferSyntaxUID", None)
            reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            # one line, the remedy first: data checks show the first line of a reason, shortened
            raise DataCheckError(
                f"{filename}: cannot decode its {getattr(syntax, 'name', syntax)} pixel data; install the decoders "
                "(pip install pyjpegls pylibjpeg-openjpeg pylibjpeg-rle python-gdcm, as monai_rd's install does) or "
                f"re-export it uncompressed ({reason})"
            ) from e
        photometric = str(img.get("PhotometricInterpretation", "")).upper()
        if photometric == "PALETTE COLOR":
            return apply_color_lut(arr, img).astype(np.float32)
        if _is_colour(img):
            return arr.astype(np.float32)  # already RGB (decoded_pixels)
        self._use_frame_groups(img, index or 0)
        arr = apply_modality_lut(arr, img)
        if self.window == WINDOW_FROM_FILE:
            arr = apply_voi_lut(arr, img)
        elif self.window != NO_WINDOW:
            img.WindowCenter, img.WindowWidth = self.window
            img.VOILUTFunction = "LINEAR"
            arr = apply_voi_lut(arr, img, prefer_lut=False)
        arr = np.asarray(arr, dtype=np.float32)
        if photometric == "MONOCHROME1":
            # the lowest value is shown white: swap min and max so that bright means high, as in MONOCHROME2
            arr = arr.max() + arr.min() - arr
        return arr

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``PydicomReader.get_data``, with a colour image's last axis marked as its channels (not a spatial axis).

        Args:
            img: what :meth:`read` returned for one file.

        Returns:
            ``(array, metadata)``: ``(W, H)`` or ``(W, H, 3)``, and MONAI's metadata with ``original_channel_dim``
            ``-1`` for colour.
        """
        arr, meta = super().get_data(img)
        if not isinstance(img, list) and _is_colour(img) and arr.ndim == 3:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1
            meta[MetaKeys.SPATIAL_SHAPE] = ensure_tuple(meta[MetaKeys.SPATIAL_SHAPE])[:2]
            meta["spacing"] = affine_to_spacing(meta[MetaKeys.ORIGINAL_AFFINE], r=2)
        return arr, meta


def is_dicom_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` name, or the ``DICM`` marker at byte 128.

    Args:
        path: the file.

    Returns:
        True for DICOM (part-10 files, with or without an extension); False otherwise or when it cannot be read.
    """
    path = os.fspath(path)
    if path.lower().endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
