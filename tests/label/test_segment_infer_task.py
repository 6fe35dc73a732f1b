"""The MONAI Label segmentation task in process: a Deep RD bundle's student served as label maps equal to its own
``inference.json``'s, on a NIfTI volume and a DICOM series, and the app giving segmentation bundles that task."""

import hashlib
import importlib.util
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')

from monai_rd.bundle import segmentation_model_spec, write_model_spec  # noqa: E402
from monai_rd.label import (  # noqa: E402
    RDClassifyInferTask,
    RDLabelApp,
    RDSegmentInferTask,
    RDSegmentTrainTask,
    RDTrainTask,
)
from monai_rd.networks import SegmentationStudent  # noqa: E402

pytestmark = pytest.mark.label

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLEEN = os.path.join(REPO, "bundles", "rd_spleen_ct")
DEMO = os.path.join(REPO, "bundles", "rd_demo")
UNET = dict(student="unet", student_channels=[4, 8], student_strides=[2], student_res_units=1)

_spec = importlib.util.spec_from_file_location("_dicom_series", os.path.join(REPO, "tests", "data", "dicom_series.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
write_dicom_series = _mod.write_dicom_series


def _write_model(models):
    """model.pt + model_meta.json as rd_spleen_ct's training writes them (a tiny UNet, seeded untrained weights)."""
    fields = dict(class_names=["background", "spleen"], spatial_dims=3, in_channels=1, roi_size=[16, 16, 8],
                  intensity_range=[-1000.0, 200.0], axcodes="RAS", pixdim=[3.0, 3.0, 4.0], **UNET)
    write_model_spec(segmentation_model_spec(SPLEEN, **fields), str(models))
    torch.manual_seed(0)
    net = SegmentationStudent("unet", num_classes=2, spatial_dims=3, in_channels=1, channels=[4, 8], strides=[2],
                              num_res_units=1)
    with torch.no_grad():  # the head's spleen bias makes the untrained map label some voxels, not none
        net.head.bias.copy_(torch.tensor([0.0, 0.02]))
    torch.save(net.state_dict(), models / "model.pt")


def _ct(seed, shape=(20, 18, 10)):
    """A CT-like volume in HU: body, a brighter blob, noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij"))
    ct = np.where((grid**2).sum(0) < 0.8, 40.0, -1000.0) + rng.normal(0, 30, shape)
    ct[((grid - 0.2) ** 2).sum(0) < 0.1] = 150.0
    return ct


def test_a_segmentation_bundle_is_served_with_the_label_maps_of_its_inference_json(tmp_path):
    """Catches the served label map drifting from the bundle's own inference (a missing spacing inverse: the map on
    the network's RAS grid; the sliding window or intensity window of another spec; a lost argmax or channel), the
    bundle's file saver run inside the server, and a DICOM series (no file extension) answered without a file."""
    models, images = tmp_path / "models", tmp_path / "volumes"
    _write_model(models)
    images.mkdir()
    affine = np.array([[-2.5, 0, 0, 30], [0, -2.5, 0, 20], [0, 0, 5.0, -40], [0, 0, 0, 1]])  # LPS-like, not the grid
    nib.save(nib.Nifti1Image(_ct(0).astype(np.int16), affine), str(images / "case1.nii.gz"))
    write_dicom_series(_ct(1), affine, str(images / "patient2" / "ct"))
    # rd_spleen_ct's documented inference command, placeholders filled
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    os.path.join(SPLEEN, "configs", "inference.json"), "--bundle_root", SPLEEN,
                    "--ckpt_dir", str(models), "--input_dir", str(images), "--output_dir", str(tmp_path / "out")],
                   check=True, capture_output=True, timeout=600, cwd=REPO)

    task = RDSegmentInferTask(SPLEEN, str(models))
    assert task.type == "segmentation" and task.dimension == 3 and task.labels == {"spleen": 1}
    cases = ((images / "case1.nii.gz", "case1_seg.nii.gz"), (images / "patient2" / "ct", "patient2/ct_seg.nii.gz"))
    for image, expected_file in cases:
        expected = nib.load(tmp_path / "out" / expected_file)
        want = np.asarray(expected.dataobj).squeeze()
        assert set(np.unique(want)) == {0, 1}  # a constant map would make the comparison empty
        label_file, result = task({"image": str(image), "device": "cpu"})
        assert label_file.endswith(".nii.gz") and result["label_names"] == {"spleen": 1}
        # the model by name and checksum, never by its server path
        assert result["class_names"] == ["background", "spleen"] and result["model"] == "rd_spleen_ct"
        assert result["model_sha256"] == hashlib.sha256((models / "model.pt").read_bytes()).hexdigest()
        got = nib.load(label_file)
        assert got.shape == want.shape == (20, 18, 10)
        assert np.allclose(got.affine, affine) and np.allclose(expected.affine, affine)
        assert np.array_equal(np.asarray(got.dataobj), want), str(image)
    assert sorted(os.listdir(tmp_path / "out")) == ["case1_seg.nii.gz", "patient2"]  # nothing written by the task


def test_the_app_gives_each_bundle_the_tasks_of_its_kind(tmp_path):
    """Catches a segmentation bundle served by the classification task (a label map read as class scores) or given
    the train task that expects class labels (and the reverse)."""
    studies = tmp_path / "studies"
    studies.mkdir()
    app = RDLabelApp(str(tmp_path), str(studies), {"bundle": f"{SPLEEN},{DEMO}"})
    infers, trainers = app.init_infers(), app.init_trainers()
    assert isinstance(infers["rd_spleen_ct"], RDSegmentInferTask) and isinstance(infers["rd_demo"], RDClassifyInferTask)
    assert infers["rd_spleen_ct"].labels == {"spleen": 1}  # from metadata.json, before any model is trained
    assert type(trainers["rd_spleen_ct"]) is RDSegmentTrainTask and type(trainers["rd_demo"]) is RDTrainTask
