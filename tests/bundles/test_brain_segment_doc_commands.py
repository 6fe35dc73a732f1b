"""Every `python -m monai.bundle` command of the docs of `bundles/rd_brain_segment` (3D, the real `astra-i3d-r152`
CT teacher) and `bundles/rd_brain_segment_2d` (2D, the real `efficientnet-lite0` teacher), run exactly as typed.

The commands run in a scratch copy of the repository root whose bundle keeps its real images and labels but lists
fewer of them for training, validation and test (two iterations per epoch at the default batch), so the defaults
(60 or 40 epochs, the full teacher) finish in a few minutes on a 2-core CPU; the commands themselves are not changed.
Inference reads the default input folder, `data/images`: every image of the bundle.
"""

import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch
from doc_commands import doc_commands, doc_variables  # tests/bundles, on sys.path under pytest
from export_check import assert_torchscript_matches_eager

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# bundle -> (spatial dims, teacher channels, items per split in the scratch datalist)
BUNDLES = {
    "rd_brain_segment": (3, 2048, {"training": 2, "validation": 1, "test": 1}),
    "rd_brain_segment_2d": (2, 1280, {"training": 8, "validation": 2, "test": 2}),
}

pytestmark = pytest.mark.slow


def _doc(bundle):
    return f"bundles/{bundle}/docs/README.md"


@pytest.fixture(scope="module", params=list(BUNDLES))
def root(request, tmp_path_factory):
    bundle = request.param
    root = tmp_path_factory.mktemp(bundle)
    here = root / "bundles" / bundle
    shutil.copytree(os.path.join(REPO, "bundles", bundle, "configs"), here / "configs")
    (here / "data").mkdir()
    for folder in ("images", "labels"):
        os.symlink(os.path.join(REPO, "bundles", bundle, "data", folder), here / "data" / folder)
    os.symlink(os.path.join(REPO, "monai_rd"), root / "monai_rd")  # as in a checkout: the package beside bundles/
    full = json.load(open(os.path.join(REPO, "bundles", bundle, "data", "datalist.json")))
    small = {"classes": full["classes"], **{s: full[s][:k] for s, k in BUNDLES[bundle][2].items()}}
    (here / "data" / "datalist.json").write_text(json.dumps(small))
    return bundle, root, small


def _run(bundle, command, cwd):
    run = subprocess.run(["bash", "-c", doc_variables(_doc(bundle)) + command], cwd=cwd, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
    return run


def test_every_documented_command_runs_as_typed(root):
    """Catches a documented command that fails, the real teacher not
    being distilled, the student-alone run distilling anyway, the test split not being what evaluation scored, label
    maps off the input's grid, and a TorchScript export that differs from the trained student."""
    bundle, root, small = root
    dims, teacher_channels, _ = BUNDLES[bundle]
    commands = doc_commands(_doc(bundle))
    assert len(commands) == 5
    assert any("ckpt_export" in c for c in commands) and any("--distill false" in c for c in commands)
    for command in commands:
        _run(bundle, command, root)

    here = root / "bundles" / bundle
    models, evald = here / "models", here / "eval"
    epochs = json.load(open(here / "configs" / "train.json"))["epochs"]
    rd = torch.load(models / f"checkpoint_epoch={epochs}.pt", weights_only=True)
    assert rd["reprogrammer"]["proj.0.weight"].shape[:2] == (64, teacher_channels)  # Phi on the real teacher's map
    # the student alone really trained alone: `false` typed on the command line is False
    alone = torch.load(models / "alone" / f"checkpoint_epoch={epochs}.pt", weights_only=True)
    assert "reprogrammer" not in alone and "network" in alone
    assert json.load(open(evald / "alone" / "val_metrics.json"))["distill"] is False
    # what evaluation, inference and export read back instead of the bundle's defaults
    meta = json.load(open(models / "model_meta.json"))
    assert meta["task"] == "segmentation" and meta["spatial_dims"] == dims and len(meta["class_names"]) == 6
    assert meta["roi_size"] == json.load(open(here / "configs" / "train.json"))["roi_size"]
    assert json.load(open(models / "alone" / "model_meta.json"))["student_channels"] == meta["student_channels"]
    test = json.load(open(evald / "test_metrics.json"))
    assert test["split"] == "test" and len(test["history"]) == 1
    assert 0.0 <= test["history"][0]["mean_dice"] <= 1.0 and len(test["history"][0]["dice_per_class"]) == 5

    images = sorted(os.listdir(here / "data" / "images"))
    written = sorted(os.listdir(evald / "segmentations"))
    assert written == [name.replace(".nii.gz", "_seg.nii.gz") for name in images]
    source, seg = nib.load(here / "data" / "images" / images[0]), nib.load(evald / "segmentations" / written[0])
    assert seg.shape[:dims] == source.shape and np.allclose(seg.affine, source.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))

    # the exported TorchScript against the eager student, through the bundle's own preprocessing and inferer
    x = assert_torchscript_matches_eager(str(here), str(models), str(here / "data" / "images"), num_classes=6)
    assert x.ndim == dims + 2
