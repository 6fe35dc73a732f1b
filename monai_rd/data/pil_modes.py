"""Convert a PIL image of any mode to the pixels it shows, for ``monai.data.PILReader(converter=...)``.

MONAI's ``PILReader`` hands ``np.asarray(image)`` to the pipeline, which for a palette (``P``) PNG is the palette
*indices*, for a gray+alpha PNG two channels, for a bilevel (``1``) image booleans. With
``PILReader(converter=convert_to_displayed_mode)`` every file yields what a viewer shows: 1 gray channel, or
3 RGB channels, with 16-bit and 32-bit gray kept at full depth. A bundle config uses it as::

    {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": true,
     "reader": "$monai.data.PILReader(converter=monai_rd.data.convert_to_displayed_mode)"}

Files PIL cannot open (NIfTI, DICOM, NumPy) still load: with a reader given, ``LoadImage`` tries it first and
falls back to its default readers when it raises.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["DISPLAYED_MODES", "convert_to_displayed_mode"]

# modes passed through unchanged: gray at 8, 16 (either byte order) and 32 bits, float gray, RGB
DISPLAYED_MODES = ("L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB")


def convert_to_displayed_mode(img: Image.Image) -> Image.Image:
    """The image ``img`` shows, as gray (``L``/``I``/``I;16``/``F``, 1 channel) or ``RGB`` (3 channels).

    ``P``/``PA`` are looked up in their palette (through ``RGBA`` when the palette has transparency) and ``1``
    becomes ``L`` (0/255). Alpha is **dropped, not composited** (``LA``/``La`` -> ``L``,
    ``RGBA``/``RGBa``/``RGBX`` -> ``RGB``): medical images saved with alpha are almost always fully opaque, where
    dropping keeps the stored values exactly, while compositing would make the result depend on a chosen
    background. ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and any other mode become ``RGB`` through PIL's ``convert``.

    Args:
        img: an opened PIL image (lazy or loaded).

    Returns:
        ``img`` itself when its mode is in :data:`DISPLAYED_MODES`, else a converted image (this loads the pixels).

    Raises:
        ValueError: PIL cannot convert the mode to ``RGB`` (names the mode and the file).
    """
    mode = img.mode
    if mode in DISPLAYED_MODES:
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("LA", "La"):
        return img.getchannel(0)
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in img.info:
            # through RGBA so PIL applies the palette's transparency instead of warning about it; alpha then dropped
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        name = getattr(img, "filename", "") or "<in-memory image>"
        raise ValueError(f"{name}: PIL cannot convert mode {mode!r} to RGB ({e}); save it as a gray or RGB PNG.") from e
