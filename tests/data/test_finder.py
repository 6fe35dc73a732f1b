"""The finder (monai_rd.data.find_images / find_volumes): DICOM by content, links followed once, left-outs counted."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from monai_rd.data import find_images, find_volumes, list_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "bundles", "rd_demo", "data")
CT = get_testdata_file("CT_small.dcm")  # a real 128x128 CT slice


def _pngs(lobe, n, start=0):
    return sorted(glob.glob(os.path.join(DEMO, lobe, "*.png")))[start : start + n]


def test_extensionless_dicom_is_found_by_content_and_every_left_out_file_is_counted_by_reason(tmp_path):
    """Catches the own-data layout P001/IM0001 (DICOM without a suffix) left out, and files dropped without a word."""
    (tmp_path / "P001").mkdir()
    shutil.copy(CT, tmp_path / "P001" / "IM0001")
    shutil.copy(_pngs("frontal", 1)[0], tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "P001" / "DICOMDIR").write_bytes(b"\0" * 200)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    found = find_images(str(tmp_path))
    assert [it["image"] for it in found.items] == [str(tmp_path / "P001" / "IM0001"), str(tmp_path / "a.png")]
    assert found.left_out == {
        "not an image": [str(tmp_path / "notes.txt")],
        "hidden": [str(tmp_path / ".DS_Store")],
        "DICOMDIR": [str(tmp_path / "P001" / "DICOMDIR")],
        "broken link": [str(tmp_path / "dangling.png")],
    }
    assert "2 image(s)" in found.summary() and "1 not an image (notes.txt)" in found.summary()
    assert list_images(str(tmp_path / "P001")) == [{"image": str(tmp_path / "P001" / "IM0001")}]


def test_linked_folders_are_followed_once_and_loops_end(tmp_path):
    """Catches a symlinked patient folder skipped (os.walk's default), and a link back up the tree walked forever."""
    data, store = tmp_path / "data", tmp_path / "store"
    (store / "P2").mkdir(parents=True)
    for src in _pngs("temporal", 2):
        shutil.copy(src, store / "P2" / os.path.basename(src))
    (data / "P1").mkdir(parents=True)
    shutil.copy(_pngs("frontal", 1)[0], data / "P1" / "x.png")
    os.symlink(store / "P2", data / "P2")  # a patient folder kept elsewhere
    os.symlink(data, data / "P1" / "up")  # a loop
    os.symlink(store / "P2", data / "again")  # a second link to the same folder
    found = find_images(str(data))
    listed = [os.path.relpath(it["image"], data) for it in found.items]
    assert listed == ["P1/x.png"] + [os.path.join("P2", os.path.basename(p)) for p in _pngs("temporal", 2)]
    assert sorted(found.left_out["already listed"]) == [str(data / "P1" / "up"), str(data / "again")]


def test_volumes_are_nifti_files_and_dicom_folders_found_by_content_through_links(tmp_path):
    """Catches a DICOM series behind a linked folder, or of suffix-less files, missed by the volume finder."""
    import nibabel as nib
    from dicom_series import write_dicom_series  # tests/data, on sys.path under pytest

    vol, affine = np.zeros((6, 5, 4)), np.diag([2.0, 2.0, 3.0, 1.0])
    write_dicom_series(vol, affine, str(tmp_path / "elsewhere" / "ct"))
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(tmp_path / "in" / "a.nii.gz"))
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "patient")
    (tmp_path / "in" / "readme.md").write_text("#")
    found = find_volumes(str(tmp_path / "in"))
    inside = tmp_path / "in"
    assert found.items == [{"image": str(inside / "a.nii.gz")}, {"image": str(inside / "patient" / "ct")}]
    assert found.left_out == {"not an image": [str(tmp_path / "in" / "readme.md")]}


def test_no_image_names_what_was_left_out(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no image .* left out: 1 not an image \(a.txt\)"):
        list_images(str(tmp_path))


def test_make_datalist_follows_linked_patient_folders_and_reports_left_outs(tmp_path):
    """Catches `make_datalist` dropping symlinked patient folders (40 images reported as 30) as typed on the command
    line, and a file linked into two class folders listed under both classes."""
    root, store = tmp_path / "data", tmp_path / "store"
    for lobe in ("frontal", "temporal"):
        for p in range(4):
            folder = (store if p == 3 else root / lobe) / f"{lobe}_P{p}"
            folder.mkdir(parents=True)
            for src in _pngs(lobe, 5, start=5 * p):
                shutil.copy(src, folder / os.path.basename(src))
        os.symlink(store / f"{lobe}_P3", root / lobe / f"{lobe}_P3")  # the fourth patient lives elsewhere
    (root / "frontal" / "frontal_P0" / "report.pdf").write_bytes(b"%PDF")
    shared = _pngs("frontal", 1)[0]
    os.symlink(root / "frontal" / "frontal_P0" / os.path.basename(shared), root / "temporal" / "dup.png")
    out = tmp_path / "datalist.json"
    done = subprocess.run(
        [sys.executable, "-m", "monai_rd.make_datalist", str(root), "--out", str(out), "--val", "0.25",
         "--test", "0.25", "--seed", "10", "--num_workers", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = json.load(open(out))
    assert sum(len(written[s]) for s in ("training", "validation", "test")) == 40
    groups = {it["group"] for s in ("training", "validation", "test") for it in written[s]}
    assert {"frontal_P3", "temporal_P3"} <= groups
    assert "1 not an image (frontal/frontal_P0/report.pdf)" in done.stdout
    assert "1 already listed (temporal/dup.png)" in done.stdout
