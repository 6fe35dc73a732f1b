"""convert_to_displayed_mode: every PIL mode loads as the pixels it shows, through MONAI's LoadImage."""

import nibabel as nib
import numpy as np
import pytest
from monai.data import PILReader
from monai.transforms import LoadImage
from PIL import Image

from monai_rd.data import convert_to_displayed_mode

INDICES = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)  # (H, W)
PALETTE = [(10, 20, 30), (200, 100, 50), (0, 255, 0)]


def _load(path):
    """What a bundle's LoadImaged yields: (C, W, H) after PILReader's reverse indexing, so compare against .T."""
    reader = PILReader(converter=convert_to_displayed_mode)
    return np.asarray(LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(path)))


def _palette_png(path, **save_kwargs):
    img = Image.fromarray(INDICES, "P")
    img.putpalette([v for rgb in PALETTE for v in rgb])
    img.save(path, **save_kwargs)
    return path


def _shown_rgb():
    return np.stack([np.array([[PALETTE[i][c] for i in row] for row in INDICES]).T for c in range(3)])


@pytest.mark.parametrize("save_kwargs", [{}, {"transparency": 1}], ids=["opaque", "with-transparency"])
def test_palette_png_loads_as_the_colours_it_shows(tmp_path, save_kwargs):
    path = _palette_png(tmp_path / "p.png", **save_kwargs)
    assert Image.open(path).mode == "P"
    # MONAI's reader alone yields the indices: the bug this converter fixes
    plain = np.asarray(LoadImage(reader=PILReader(), image_only=True, ensure_channel_first=True)(str(path)))
    np.testing.assert_array_equal(plain, INDICES.T[None])
    out = _load(path)
    # transparency is dropped, not composited: the transparent index still shows its palette colour
    np.testing.assert_array_equal(out, _shown_rgb())


def test_alpha_is_dropped_gray_alpha_to_one_channel_rgba_to_three(tmp_path):
    gray = np.array([[5, 60, 250], [7, 9, 11]], np.uint8)
    alpha = np.array([[255, 0, 128], [1, 2, 3]], np.uint8)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(_load(tmp_path / "la.png"), gray.T[None])
    rgb = np.stack([gray, 255 - gray, gray // 2], -1)
    Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(_load(tmp_path / "rgba.png"), rgb.transpose(2, 1, 0))
    pa = Image.fromarray(INDICES, "P")
    pa.putpalette([v for rgb_ in PALETTE for v in rgb_])
    pa = pa.convert("PA")
    assert pa.mode == "PA"
    np.testing.assert_array_equal(np.asarray(convert_to_displayed_mode(pa)), _shown_rgb().transpose(2, 1, 0))


def test_bilevel_16_bit_and_cmyk(tmp_path):
    bits = np.array([[True, False], [False, True]])
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(_load(tmp_path / "b.png"), (bits * 255).T[None])
    deep = np.array([[0, 1000], [40000, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    img = Image.open(tmp_path / "d.png")
    assert convert_to_displayed_mode(img) is img  # 16-bit gray is kept, not cut to 8 bits
    np.testing.assert_array_equal(_load(tmp_path / "d.png"), deep.T[None])
    Image.new("CMYK", (3, 2), (255, 0, 0, 0)).save(tmp_path / "c.jpg")  # pure cyan
    out = _load(tmp_path / "c.jpg")
    assert out.shape == (3, 3, 2)
    np.testing.assert_allclose(out[:, 0, 0], [0, 255, 255], atol=2)  # JPEG rounding


def test_non_pil_files_still_load_through_the_fallback_readers(tmp_path):
    vol = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(_load(tmp_path / "v.nii.gz"), vol[None])
