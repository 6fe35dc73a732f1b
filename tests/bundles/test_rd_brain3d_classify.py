"""The 3D classification bundle end to end on tiny inputs through `python -m monai.bundle run` (a subprocess, as a
user runs it): RD training of a 3D student from a 3D teacher map, test-split evaluation and inference to a CSV."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_brain3d_classify")
CONFIGS = os.path.join(BUNDLE, "configs")
DATA = os.path.join(BUNDLE, "data")


def _tiny_teacher(path):
    # a scripted stand-in for the 3D CT encoder (the real one is tested in tests/networks/teachers/test_astra.py):
    # a 3D map of 6 channels, so Phi must be a 3D module and pool it
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 6, 4, stride=4), torch.nn.ReLU())
    torch.jit.script(net).save(str(path))
    return f"torchscript:{path}"


def _bundle_run(config_file, tmp, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", BUNDLE,
           "--ckpt_dir", str(tmp / "models"), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rd_brain3d_classify")
    full = json.load(open(os.path.join(DATA, "datalist.json")))
    # two patches of each class for training, one of each for validation and test
    sub = {"classes": full["classes"]}
    for split, per_class in (("training", 2), ("validation", 1), ("test", 1)):
        sub[split] = [it for c in range(5) for it in [i for i in full[split] if i["label"] == c][:per_class]]
    (tmp / "datalist.json").write_text(json.dumps(sub))
    common = ["--datalist_json", str(tmp / "datalist.json"), "--output_dir", str(tmp / "eval")]
    _bundle_run(os.path.join(CONFIGS, "train.json"), tmp, *common, "--epochs", "2", "--batch_size", "5",
                "--teacher_name", _tiny_teacher(tmp / "teacher.ts"), "--teacher#input_size", "[16, 16, 16]",
                "--phi_hidden", "8", "--phi_blocks", "1")
    return tmp, sub, common


@pytest.mark.slow
def test_rd_training_builds_3d_modules_and_writes_the_model(trained):
    """Catches spatial_dims not reaching the student or Phi (2D convolutions on 3D maps) and a broken run folder."""
    tmp, _, _ = trained
    assert os.path.isfile(tmp / "models" / "model.pt")
    ckpt = torch.load(tmp / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert ckpt["reprogrammer"]["proj.0.weight"].shape == (8, 6, 1, 1, 1)  # a 3D 1x1 conv on the teacher's 6 channels
    assert ckpt["network"]["backbone.conv1.weight"].ndim == 5  # a 3D ResNet
    meta = json.load(open(tmp / "models" / "model_meta.json"))
    assert meta["student"] == "monai:resnet10" and meta["image_size"] == 16
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1, 2] and val["class_names"] == full_classes()


def full_classes():
    return json.load(open(os.path.join(DATA, "datalist.json")))["classes"]


@pytest.mark.slow
def test_evaluate_and_inference_from_the_command_line(trained, tmp_path):
    """Catches evaluate/inference configs that cannot rebuild the 3D student from the trained model."""
    tmp, sub, common = trained
    _bundle_run(f"['{CONFIGS}/train.json','{CONFIGS}/evaluate.json']", tmp, *common)
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and 0.0 <= test["history"][0]["accuracy"] <= 1.0
    (tmp_path / "in").mkdir()
    for it in sub["test"]:
        os.symlink(os.path.join(DATA, it["image"]), tmp_path / "in" / os.path.basename(it["image"]))
    _bundle_run(os.path.join(CONFIGS, "inference.json"), tmp, "--input_dir", str(tmp_path / "in"),
                "--output_dir", str(tmp_path / "out"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == len(sub["test"]) == 5
    for row in rows:
        probs = [float(row[c]) for c in full_classes()]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
