"""Inference reads each input on its own: bad inputs are skipped with their reason, never classified, and the run
says so (summary, skipped.csv, exit status); every input the finder sees is predicted. Run as typed on the CLI."""

import csv
import glob
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from trained_model import REPO, write_trained_model  # tests/bundle, on sys.path under pytest

DEMO = os.path.join(REPO, "bundles", "rd_demo")
SEG2D = os.path.join(REPO, "bundles", "rd_brain_segment_2d")


def _infer(bundle, tmp_path, *extra):
    config = os.path.join(bundle, "configs", "inference.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--ckpt_dir", str(tmp_path / "models"),
           "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def _rows(path):
    return {r["image"]: r for r in csv.DictReader(open(path))}


@pytest.mark.slow
def test_classification_inference_predicts_every_readable_image_and_skips_bad_ones_with_their_reason(tmp_path):
    """Catches: one truncated PNG aborting the whole run (no CSV, the file not named); a NaN image written as
    `nan.tif,nan,...,cerebellum` with exit 0; an extension-less DICOM (P001/IM0001) and a linked sub-folder
    silently not read."""
    write_trained_model("rd_demo", tmp_path / "models", image_size=32)
    inp = tmp_path / "in"
    inp.mkdir()
    pngs = sorted(glob.glob(os.path.join(DEMO, "data", "frontal", "*.png")))[:3]
    for p in pngs[:2]:
        shutil.copy(p, inp)
    data = open(pngs[2], "rb").read()
    (inp / "truncated.png").write_bytes(data[: len(data) // 2])
    nan = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(inp / "nan.tif")
    (inp / "P001").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), inp / "P001" / "IM0001")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(pngs[0], tmp_path / "elsewhere" / "linked.png")
    os.symlink(tmp_path / "elsewhere", inp / "linked_dir")

    done = _infer(DEMO, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-2]
    assert last.startswith("monai_rd: SkippedInputsError: 4 of 6 input(s) predicted")
    assert "truncated.png: not read: OSError: image file is truncated" in last and "nan.tif: not predicted" in last
    predicted = _rows(tmp_path / "out" / "predictions.csv")
    expected = [*(str(inp / os.path.basename(p)) for p in pngs[:2]), str(inp / "P001" / "IM0001"),
                str(inp / "linked_dir" / "linked.png")]
    assert sorted(predicted) == sorted(expected)
    lobes = ("cerebellum", "frontal", "occipital", "parietal", "temporal")
    assert all(r["predicted"] in lobes for r in predicted.values())
    skipped = _rows(tmp_path / "out" / "skipped.csv")
    assert sorted(skipped) == [str(inp / "nan.tif"), str(inp / "truncated.png")]
    assert "NaN or infinite" in skipped[str(inp / "nan.tif")]["status"]

    done = _infer(DEMO, tmp_path, "--allow_skipped", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 of 6 input(s) predicted" in done.stdout + done.stderr


@pytest.mark.slow
def test_segmentation_inference_writes_no_label_map_for_a_bad_volume(tmp_path):
    """Catches one corrupt or NaN volume aborting a segmentation run, or a label map written for it (argmax of NaN
    is background everywhere)."""
    write_trained_model("rd_brain_segment_2d", tmp_path / "models")
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(glob.glob(os.path.join(SEG2D, "data", "images", "*.nii.gz")))[0]
    shutil.copy(good, inp / "good.nii.gz")
    data = open(good, "rb").read()
    (inp / "cut.nii.gz").write_bytes(data[: len(data) // 3])
    img = nib.load(good)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[tuple(s // 2 for s in vol.shape)] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), str(inp / "nan.nii.gz"))

    done = _infer(SEG2D, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-2].startswith("monai_rd: SkippedInputsError: 1 of 3 input(s) predicted")
    assert sorted(os.listdir(tmp_path / "out")) == ["good_seg.nii.gz", "skipped.csv"]
    skipped = _rows(tmp_path / "out" / "skipped.csv")
    assert sorted(skipped) == [str(inp / "cut.nii.gz"), str(inp / "nan.nii.gz")]
    assert skipped[str(inp / "cut.nii.gz")]["status"].startswith("not read:")
