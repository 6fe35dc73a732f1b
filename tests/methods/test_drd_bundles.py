"""``--method drd`` through each kind of bundle as a user types it (``python -m monai.bundle run ...`` in a
subprocess, tiny data): 2D classification (``rd_demo``, the real EfficientNet-Lite0), 3D classification
(``rd_brain3d_classify``), 2D segmentation (``rd_brain_segment_2d``, the real Lite0) and 3D segmentation
(``rd_brain_segment``); the 3D bundles' teacher is a tiny ``monai:ResNet`` written here (its ``layer1..layer4`` are
stage taps; the bundles' own 3D teacher has no offline weights). Then ``evaluate.json`` and ``inference.json`` on the
trained model, and ``python -m monai_rd.export`` of the DRD-trained student (it is just the student)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow

# a tiny 3D MONAI ResNet as the teacher from the command line (its weights are written by the fixture)
TINY_3D_TEACHER = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 8], "spatial_dims": 3,
                   "n_input_channels": 1, "num_classes": 2}
TEACHER_ARGS = ["--teacher_name", "monai:ResNet", "--teacher#feature_layer", "layer4",
                *[a for k, v in TINY_3D_TEACHER.items() for a in (f"--teacher#{k}", json.dumps(v))]]
# bundle -> (recipe, items per split, extra training arguments, stages of the student)
BUNDLES = {
    "rd_demo": ("classification", (2, 1, 1), ["--batch_size", "5"], 4),
    "rd_brain3d_classify": ("classification", (2, 1, 1),
                            ["--batch_size", "5", "--teacher#input_size", "[16, 16, 16]", *TEACHER_ARGS], 4),
    "rd_brain_segment_2d": ("segmentation", (4, 1, 1), ["--batch_size", "2", "--student_channels", "[4, 8, 16]"], 3),
    "rd_brain_segment": ("segmentation", (2, 1, 1),
                         ["--batch_size", "2", "--student_channels", "[4, 8]", "--student_strides", "[2]",
                          "--teacher_input_size", "[16, 32, 8]", *TEACHER_ARGS], 2),
}


def _cli(*args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _subset(bundle, recipe, sizes, path):
    """The first items of each split (classification: of each class) of the bundle's own datalist."""
    data = os.path.join(REPO, "bundles", bundle, "data")
    if bundle == "rd_demo":
        full = json.load(open(os.path.join(REPO, "bundles", bundle, "configs", "datalist.json")))
    else:
        full = json.load(open(os.path.join(data, "datalist.json")))
    sub = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    for split, k in zip(("training", "validation", "test"), sizes):
        if recipe == "classification":
            sub[split] = [it for c in range(5) for it in [i for i in full[split] if i["label"] == c][:k]]
        else:
            sub[split] = full[split][:k]
    path.write_text(json.dumps(sub))
    return sub


@pytest.fixture(scope="module", params=list(BUNDLES))
def trained(request, tmp_path_factory):
    """One epoch of ``--method drd`` on the bundle's first few images, from the command line."""
    bundle = request.param
    recipe, sizes, extra, num_stages = BUNDLES[bundle]
    tmp = tmp_path_factory.mktemp(bundle)
    sub = _subset(bundle, recipe, sizes, tmp / "datalist.json")
    if "--teacher_name" in extra:
        from monai.networks.nets import ResNet

        torch.manual_seed(0)
        torch.save(ResNet(**TINY_3D_TEACHER).state_dict(), tmp / "teacher.pt")
        extra = [*extra, "--teacher_weights", str(tmp / "teacher.pt")]
    root = os.path.join("bundles", bundle)
    paths = ["--bundle_root", root, "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval")]
    log = _cli("-m", "monai.bundle", "run", "--config_file", f"{root}/configs/train.json", *paths,
               "--datalist_json", str(tmp / "datalist.json"), "--method", "drd", "--epochs", "1", "--drd_hidden", "8",
               *extra)
    return bundle, recipe, tmp, sub, paths, log, num_stages


def test_drd_trains_the_student_and_checkpoints_the_projectors(trained):
    """Catches --method drd not reaching the recipe (an RD checkpoint with a reprogrammer), a stage without its
    projector or its logged terms, a cache built before its size is logged, and a deployed model.pt that is not
    the plain student (keys of the bundle's network_def, nothing of the projectors)."""
    bundle, recipe, tmp, _, _, log, num_stages = trained
    ckpt = torch.load(tmp / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert "reprogrammer" not in ckpt and "projectors" in ckpt
    assert {k.split(".")[0] for k in ckpt["projectors"]} == {str(i) for i in range(num_stages)}
    assert all(f"cka_stage{i}" in log and f"ce_hybrid_stage{i}" in log for i in range(num_stages))
    assert log.index("DRD stage-map cache:") < log.index("teacher-feature cache:")
    model = torch.load(tmp / "models" / "model.pt", weights_only=True)
    assert model.keys() == ckpt["network"].keys() and not any("projector" in k for k in model)
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert val["method"] == "drd" and [h["epoch"] for h in val["history"]] == [1]
    assert json.load(open(tmp / "models" / "model_meta.json"))["method"] == "drd"


def test_evaluate_inference_and_export_of_the_drd_student(trained, tmp_path):
    """The trained student through evaluate.json (test split), inference.json (a CSV of probabilities, or label
    maps) and monai_rd.export (torch.export, checked against the eager student on a real image)."""
    bundle, recipe, tmp, sub, paths, _, _ = trained
    root = os.path.join("bundles", bundle)
    _cli("-m", "monai.bundle", "run", "--config_file", f"['{root}/configs/train.json','{root}/configs/evaluate.json']",
         *paths, "--datalist_json", str(tmp / "datalist.json"))
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and test["method"] == "drd"

    images = tmp_path / "in"
    images.mkdir()
    base = os.path.join(REPO, root, "data")
    for it in sub["test"]:
        os.symlink(os.path.join(base, it["image"]), images / os.path.basename(it["image"]))
    out = tmp_path / "out"
    _cli("-m", "monai.bundle", "run", "--config_file", f"{root}/configs/inference.json", "--bundle_root", root,
         "--ckpt_dir", str(tmp / "models"), "--input_dir", str(images), "--output_dir", str(out))
    if recipe == "classification":
        rows = open(out / "predictions.csv").read().splitlines()
        assert len(rows) == 1 + len(sub["test"])
    else:
        assert sorted(os.listdir(out)) == sorted(
            os.path.basename(it["image"]).replace(".nii.gz", "_seg.nii.gz") for it in sub["test"]
        )

    exported = tmp_path / "student.pt2"
    msg = _cli("-m", "monai_rd.export", "--bundle", root, "--ckpt", str(tmp / "models" / "model.pt"),
               "--format", "torch_export", "--out", str(exported), "--images", str(images),
               "--ckpt_dir", str(tmp / "models"))
    assert exported.is_file() and "export written to" in msg
