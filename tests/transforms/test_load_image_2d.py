"""LoadImage2D on real files: the demo PNGs, pydicom's (and pydicom-data's) DICOM test files, nibabel's NIfTI test
volumes."""

import glob
import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import PILReader, list_data_collate
from monai.transforms import Compose, LoadImage, LoadImaged, Resized
from nibabel.testing import data_path
from PIL import Image
from pydicom.data import get_testdata_file

from monai_rd.data import convert_to_displayed_mode
from monai_rd.data.dicom_reader import (
    apply_modality_lut,  # pydicom's, from where pydicom 3 or 2.4 keeps it
    is_dicom_file,
)
from monai_rd.errors import DataCheckError, OptionError
from monai_rd.transforms import LoadImage2D, LoadImage2Dd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_PNGS = sorted(glob.glob(os.path.join(REPO, "bundles", "rd_demo", "data", "*", "*.png")))
ANATOMICAL = os.path.join(str(data_path), "anatomical.nii")  # a real 3D MRI, (33, 41, 25)
FOUR_D = os.path.join(str(data_path), "example4d.nii.gz")  # (128, 96, 24, 2)


def recipe_loader():
    """The loading step the recipes use today, which LoadImage2D replaces."""
    return LoadImage(reader=PILReader(converter=convert_to_displayed_mode), image_only=True, ensure_channel_first=True)


def test_png_and_jpeg_load_exactly_as_the_recipe_loader(tmp_path):
    jpeg = str(tmp_path / "patch.jpg")
    Image.open(DEMO_PNGS[0]).convert("RGB").save(jpeg, quality=90)
    for path in [*DEMO_PNGS[:3], jpeg]:
        expected = recipe_loader()(path)
        out = LoadImage2D()(path)
        assert out.shape == expected.shape and out.dtype == torch.float32
        torch.testing.assert_close(out.as_tensor(), expected.as_tensor(), rtol=0, atol=0)
        assert out.meta["filename_or_obj"] == path


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_files_keep_their_full_depth(tmp_path, ext):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    values = (apply_modality_lut(ds.pixel_array, ds) + 1024).astype(np.uint16)  # HU + 1024, up to 2191 > 255
    path = str(tmp_path / f"ct16.{ext}")
    Image.fromarray(values).save(path)
    out = LoadImage2D()(path)
    np.testing.assert_array_equal(np.asarray(out[0]), values.T.astype(np.float32))


def test_dicom_is_found_by_content_and_read_as_displayed(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    plain = str(tmp_path / "IM0001")  # how many PACS exports name their files
    shutil.copy(src, plain)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("x" * 200)
    assert is_dicom_file(plain) and is_dicom_file(src) and not is_dicom_file(str(not_dicom))
    out = LoadImage2D(window="none")(plain)
    ds = pydicom.dcmread(src)
    np.testing.assert_array_equal(np.asarray(out), apply_modality_lut(ds.pixel_array, ds).T[None].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(LoadImage2D(window="none")(src)), np.asarray(out))
    # MONAI's plain loader reads the stored values; the window makes the difference visible
    assert not np.array_equal(np.asarray(LoadImage2D(window=[40, 80])(plain)), np.asarray(out))


def test_a_3d_volume_gives_its_middle_slice_and_says_so_once(caplog):
    volume = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float32)
    loader = LoadImage2D()
    with caplog.at_level(logging.INFO, logger="monai_rd.transforms.load_image_2d"):
        out = loader(ANATOMICAL)
        loader(ANATOMICAL)
    assert out.shape == (1, 33, 41)
    np.testing.assert_array_equal(np.asarray(out[0]), volume[:, :, 12])
    said = [r.getMessage() for r in caplog.records if "3D volume" in r.getMessage()]
    assert len(said) == 1 and "anatomical.nii" in said[0] and "slice 12 of 25" in said[0]
    assert out.affine.shape == (4, 4)


def test_slice_axis_index_and_projections():
    volume = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(LoadImage2D(slice_axis=0, slice_index=3)(ANATOMICAL)[0]), volume[3])
    np.testing.assert_array_equal(np.asarray(LoadImage2D(slice_axis=1, slice_index=-1)(ANATOMICAL)[0]), volume[:, -1])
    np.testing.assert_array_equal(np.asarray(LoadImage2D(projection="max")(ANATOMICAL)[0]), volume.max(2))
    np.testing.assert_allclose(
        np.asarray(LoadImage2D(projection="mean", slice_axis=1)(ANATOMICAL)[0]), volume.mean(1), rtol=1e-5
    )
    with pytest.raises(
        DataCheckError, match=r"anatomical\.nii has 25 slices along spatial axis 2 .* slice 25 does not exist"
    ):
        LoadImage2D(slice_index=25)(ANATOMICAL)


def test_a_2d_nifti_and_a_one_slice_volume_load_as_2d(tmp_path):
    img = nib.load(ANATOMICAL)
    plane = np.asarray(img.dataobj, dtype=np.float32)[:, :, 7]
    nib.save(nib.Nifti1Image(plane, img.affine), str(tmp_path / "slice2d.nii.gz"))
    nib.save(nib.Nifti1Image(plane[:, :, None], img.affine), str(tmp_path / "slice3d.nii.gz"))
    for name in ("slice2d.nii.gz", "slice3d.nii.gz"):
        out = LoadImage2D(slice_axis=0)(str(tmp_path / name))  # a one-slice volume ignores the slice axis
        np.testing.assert_array_equal(np.asarray(out), plane[None])


def test_a_4d_file_is_refused_with_its_name():
    assert nib.load(FOUR_D).ndim == 4
    with pytest.raises(DataCheckError, match=r"example4d\.nii\.gz has shape \(2, 128, 96, 24\).*one 3D volume"):
        LoadImage2D()(FOUR_D)


def test_invalid_options_are_named():
    with pytest.raises(OptionError, match="--projection must be one of"):
        LoadImage2D(projection="min")
    with pytest.raises(OptionError, match="set one of them"):
        LoadImage2D(slice_index=3, projection="max")
    with pytest.raises(OptionError, match="--slice_axis must be"):
        LoadImage2D(slice_axis=3)
    with pytest.raises(OptionError, match="--frame must be an integer"):
        LoadImage2D(frame="first")
    assert LoadImage2D(slice_index="null", projection="none", frame="2").dicom_reader.frame == 2


def test_a_batch_mixing_formats_collates_like_the_inference_pipeline():
    # a PNG, pydicom's CT, a palette colour ultrasound (pydicom-data, the dev extra) and a NIfTI volume
    files = [DEMO_PNGS[0], get_testdata_file("CT_small.dcm"), get_testdata_file("OBXXXX1A.dcm"), ANATOMICAL]
    transform = Compose([LoadImage2Dd("image"), Resized("image", spatial_size=(32, 32))])
    items = [transform({"image": f}) for f in files]
    assert [it["image"].shape[0] for it in items] == [1, 1, 3, 1]
    batch = list_data_collate([{"image": it["image"][:1]} for it in items])
    assert batch["image"].shape == (4, 1, 32, 32)
    assert list(batch["image"].meta["filename_or_obj"]) == files


def test_dict_version_is_a_drop_in_for_loadimaged():
    data = {"image": DEMO_PNGS[0], "label": 3}
    ours = LoadImage2Dd("image")(data)
    theirs = LoadImaged("image", reader=PILReader(converter=convert_to_displayed_mode), image_only=True,
                        ensure_channel_first=True)(data)
    assert ours["label"] == 3 and data["image"] == DEMO_PNGS[0]
    torch.testing.assert_close(ours["image"].as_tensor(), theirs["image"].as_tensor(), rtol=0, atol=0)
