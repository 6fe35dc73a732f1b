"""DicomDisplayReader on real DICOM files (pydicom's test files and pydicom-data), checked against pydicom's LUTs.

Only files that pydicom 2.4 and 3 both find offline are used (pydicom's own, or pydicom-data's, which the dev extra
installs), so that the tests run the same with the main install (pydicom 3) and with the label extra (pydicom 2.4).
"""

import copy

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from monai_rd.data import DicomDisplayReader, parse_window

# pydicom's own functions, from pydicom.pixels (pydicom 3) or pydicom.pixel_data_handlers.util (pydicom 2.4)
from monai_rd.data.dicom_reader import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    convert_color_space,
    decoded_pixels,
)
from monai_rd.errors import DataCheckError, OptionError


def dicom_file(name):
    """A real DICOM test file: pydicom's own, or pydicom-data's (the dev extra) without trying the network."""
    from pydicom.data import get_testdata_file

    if name not in {"CT_small.dcm", "MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "test-SR.dcm"}:
        pytest.importorskip("data_store", reason="needs pydicom-data: pip install -e '.[dev]'")
    return get_testdata_file(name)


def load(name, **kwargs):
    """Channel-first array as LoadImage gives it with the reader: (C, W, H)."""
    reader = DicomDisplayReader(**kwargs)
    return np.asarray(
        LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(dicom_file(name), reader=reader)
    )


def shown(arr2d):
    """A (rows, columns) array in the reader's channel-first (1, W, H) layout (MONAI swaps rows and columns)."""
    return np.asarray(arr2d, dtype=np.float32).T[None]


def test_ct_is_rescaled_to_hounsfield_units_by_the_modality_lut():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    out = load("CT_small.dcm", window="none")
    np.testing.assert_array_equal(out, shown(apply_modality_lut(ds.pixel_array, ds)))
    np.testing.assert_array_equal(out, shown(ds.pixel_array.astype(np.float32) - 1024))
    assert out.min() < -800  # air is near -1000 HU, not the stored ~100


def test_configured_window_is_pydicom_linear_windowing_of_the_hu_values():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ref = copy.deepcopy(ds)
    ref.WindowCenter, ref.WindowWidth = 40, 400
    expected = apply_windowing(apply_modality_lut(ds.pixel_array, ref), ref)
    out = load("CT_small.dcm", window=[40, 400])
    np.testing.assert_allclose(out, shown(expected), rtol=1e-6)
    # the window clips: everything below -160 HU is at the bottom of the output range
    hu = shown(apply_modality_lut(ds.pixel_array, ds))
    assert np.all(out[hu <= -160.5] == out.min()) and np.all(out[hu > 239.5] == out.max())
    np.testing.assert_allclose(load("CT_small.dcm", window="40, 400"), out)


def test_the_files_own_window_is_applied_by_default():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    out = load("MR_small.dcm")
    np.testing.assert_allclose(out, shown(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)), rtol=1e-6)
    assert not np.allclose(out, load("MR_small.dcm", window="none"))


def test_monochrome1_is_inverted_after_the_window():
    ds = pydicom.dcmread(dicom_file("RG3_UNCR.dcm"))  # a real CR chest film, MONOCHROME1
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    voi = shown(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    out = load("RG3_UNCR.dcm")
    np.testing.assert_allclose(out, voi.max() + voi.min() - voi, rtol=1e-6)
    # bright in the output where the stored value is low: the two are perfectly anti-correlated
    assert np.corrcoef(out.ravel()[::97], voi.ravel()[::97])[0, 1] < -0.999


def test_rgb_stays_rgb_and_ybr_is_converted():
    ds = pydicom.dcmread(dicom_file("US1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "RGB"
    out = load("US1_UNCR.dcm")
    assert out.shape == (3, ds.Columns, ds.Rows)
    np.testing.assert_array_equal(out, np.transpose(ds.pixel_array, (2, 1, 0)).astype(np.float32))
    # the same picture stored as YBR_FULL loads as the RGB one (up to YBR rounding), not as Y/Cb/Cr values
    ybr = load("SC_ybr_full_uncompressed.dcm")
    rgb = load("SC_rgb.dcm")
    raw = pydicom.dcmread(dicom_file("SC_ybr_full_uncompressed.dcm"))
    assert raw.PhotometricInterpretation == "YBR_FULL"
    assert np.abs(np.transpose(decoded_pixels(raw, as_rgb=False), (2, 1, 0)) - rgb).max() > 50
    assert np.abs(ybr - rgb).max() <= 8


def test_palette_colour_is_looked_up():
    ds = pydicom.dcmread(dicom_file("OBXXXX1A.dcm"))  # a palette colour ultrasound
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    out = load("OBXXXX1A.dcm")
    assert out.shape == (3, ds.Columns, ds.Rows)
    np.testing.assert_array_equal(out, np.transpose(apply_color_lut(ds.pixel_array, ds), (2, 1, 0)).astype(np.float32))


def test_multi_frame_reads_the_middle_frame_or_the_chosen_one():
    ds = pydicom.dcmread(dicom_file("emri_small.dcm"))
    frames = ds.pixel_array
    assert frames.shape[0] == 10
    np.testing.assert_array_equal(load("emri_small.dcm"), shown(frames[5]))
    np.testing.assert_array_equal(load("emri_small.dcm", frame=2), shown(frames[2]))
    np.testing.assert_array_equal(load("emri_small.dcm", frame=-1), shown(frames[9]))
    with pytest.raises(DataCheckError, match=r"emri_small\.dcm has 10 frames, so frame 10 does not exist"):
        load("emri_small.dcm", frame=10)
    # a multi-frame colour ultrasound, JPEG baseline in YBR_FULL_422: one frame, converted to RGB
    ds = pydicom.dcmread(dicom_file("color3d_jpeg_baseline.dcm"))
    assert (ds.NumberOfFrames, ds.PhotometricInterpretation, ds.Rows, ds.Columns) == (120, "YBR_FULL_422", 480, 640)
    out = load("color3d_jpeg_baseline.dcm", frame=3)
    assert out.shape == (3, 640, 480)
    rgb = decoded_pixels(ds, 3)
    np.testing.assert_array_equal(out, np.transpose(rgb, (2, 1, 0)).astype(np.float32))
    ybr = decoded_pixels(ds, 3, as_rgb=False)
    assert np.abs(rgb.astype(int) - ybr).max() > 50  # converted: not the stored Y/Cb/Cr values
    np.testing.assert_array_equal(rgb, convert_color_space(ybr, "YBR_FULL_422", "RGB"))
    assert not np.array_equal(rgb, decoded_pixels(ds, 0))  # frame 3, not the first


def test_enhanced_ct_takes_rescale_and_window_from_the_functional_groups():
    ds = pydicom.dcmread(dicom_file("eCT_Supplemental.dcm"))
    assert "RescaleIntercept" not in ds  # only in the Pixel Value Transformation functional group
    frame0 = ds.pixel_array[0].astype(np.float32)
    np.testing.assert_array_equal(load("eCT_Supplemental.dcm", frame=0, window="none"), shown(frame0 - 1024))
    ref = copy.deepcopy(ds)
    ref.RescaleSlope, ref.RescaleIntercept, ref.WindowCenter, ref.WindowWidth = 1, -1024, 49, 102
    expected = apply_windowing(apply_modality_lut(ds.pixel_array[0], ref), ref)
    np.testing.assert_allclose(load("eCT_Supplemental.dcm", frame=0), shown(expected), rtol=1e-6)


def test_compressed_transfer_syntaxes_decode_to_the_same_pixels():
    # JPEG-LS lossless of MR_small: needs the decoders of pydicom[pixeldata]
    np.testing.assert_array_equal(load("MR_small_jpeg_ls_lossless.dcm"), load("MR_small.dcm"))


def test_a_dicom_object_without_pixels_is_named():
    with pytest.raises(DataCheckError, match=r"test-SR\.dcm holds no pixel data \(it is a Comprehensive SR"):
        load("test-SR.dcm")


def test_parse_window():
    assert parse_window("FILE") == "file"
    assert parse_window(None) == parse_window("none") == parse_window("null") == "none"
    assert parse_window([40, 400]) == parse_window("40,400") == parse_window("[40, 400]") == (40.0, 400.0)
    for bad in ("soft", [40], [40, 400, 1], [True, 400], ["a", "b"], 40):
        with pytest.raises(OptionError, match="--window must be"):
            parse_window(bad)
    with pytest.raises(OptionError, match="width must be at least 1"):
        parse_window([40, 0.5])
    with pytest.raises(OptionError, match="--frame must be an integer"):
        DicomDisplayReader(frame="middle")


def test_loadimage_does_not_register_a_dicom_reader_that_cannot_work_here():
    import warnings

    from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI warned on every LoadImage() where nvImageCodec/CUDA are missing
        names = [type(r).__name__ for r in LoadImage().readers]
    assert ("NvImgCodecPydicomReader" in names) == is_nvimgcodec_available()
    assert "PydicomReader" in names
