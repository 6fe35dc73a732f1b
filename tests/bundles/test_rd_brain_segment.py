"""The 3D segmentation bundle end to end on tiny inputs through monai.bundle: dense-RD training, test-split
evaluation, sliding-window inference to NIfTI label maps, TorchScript export, and the student alone from the CLI."""

import json
import os
import subprocess
import sys

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.inferers import sliding_window_inference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_brain_segment")
CONFIGS = os.path.join(BUNDLE, "configs")
DATA = os.path.join(BUNDLE, "data")
TINY_NET = {"student_channels": [4, 8], "student_strides": [2], "phi_hidden": 8, "phi_blocks": 1}


def _tiny_teacher(path):
    # a scripted stand-in for the 3D CT encoder (the real one is tested in tests/networks/teachers/test_astra.py):
    # a stride-4 map, so Phi must resample it to the student's full-resolution decoder map
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 6, 4, stride=4), torch.nn.ReLU())
    torch.jit.script(net).save(str(path))
    return f"torchscript:{path}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rd_brain_segment")
    full = json.load(open(os.path.join(DATA, "datalist.json")))
    sub = {"training": full["training"][1:3], "validation": full["validation"][:1], "test": full["test"][1:2]}
    (tmp / "datalist.json").write_text(json.dumps(sub))
    overrides = {
        "bundle_root": BUNDLE,
        "datalist_json": str(tmp / "datalist.json"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "epochs": 2,
        "batch_size": 2,
        "teacher_name": _tiny_teacher(tmp / "teacher.ts"),
        "teacher_input_size": [16, 32, 8],
        **TINY_NET,
    }
    workflow = monai.bundle.ConfigWorkflow(config_file=os.path.join(CONFIGS, "train.json"), workflow_type="train",
                                           **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        {k: float(e.state.output[0][k] if isinstance(e.state.output, list) else e.state.output[k])
         for k in ("loss", "kd", "cka", "alpha")}))
    teacher = workflow.parser.get_parsed_content("method_def").teacher  # built by initialize (Method.prepare)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    workflow.run()
    after = teacher.state_dict()
    return tmp, overrides, seen, all(torch.equal(v, after[k]) for k, v in before.items())


def test_dense_rd_training_writes_model_metrics_and_keeps_the_teacher(run):
    tmp, _, seen, teacher_unchanged = run
    assert teacher_unchanged
    assert os.path.isfile(tmp / "models" / "model.pt") and os.path.getsize(tmp / "eval" / "training_curve.png") > 1000
    ckpt = torch.load(tmp / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert {"network", "reprogrammer", "optimizer", "run_state"} <= set(ckpt)
    assert ckpt["reprogrammer"]["proj.0.weight"].shape[:2] == (8, 6)  # dense Phi on the teacher's 6 channels
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1, 2]
    assert all(0.0 <= h["mean_dice"] <= 1.0 and len(h["dice_per_class"]) == 5 for h in val["history"])
    assert val["class_names"] == ["cerebellum", "frontal", "occipital", "parietal", "temporal"]
    # 2 epochs x 1 iteration (2 training slabs, batch 2): the distillation terms are live and alpha decays
    assert len(seen) == 2 and all(s["kd"] > 0 and s["cka"] > 0 for s in seen)
    assert [s["alpha"] for s in seen] == pytest.approx([0.5, 0.0])  # set before each iteration from its number


def test_evaluate_on_the_test_split(run):
    tmp, overrides, _, _ = run
    configs = [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")]
    monai.bundle.run(config_file=configs, **overrides)
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and len(test["history"]) == 1
    assert 0.0 <= test["history"][0]["mean_dice"] <= 1.0


def test_sliding_window_inference_and_torchscript_export(run, tmp_path):
    tmp, _, _, _ = run
    slab = os.path.join(DATA, "images", "ch2_R_z038.nii.gz")
    (tmp_path / "in").mkdir()
    os.symlink(slab, tmp_path / "in" / "slab.nii.gz")
    student = {k: v for k, v in TINY_NET.items() if k.startswith("student")}
    common = {"bundle_root": BUNDLE, "ckpt_dir": str(tmp / "models"), **student}
    monai.bundle.run(config_file=os.path.join(CONFIGS, "inference.json"), input_dir=str(tmp_path / "in"),
                     output_dir=str(tmp_path / "out"), roi_size=[24, 48, 16], **common)
    seg = nib.load(tmp_path / "out" / "slab_seg.nii.gz")
    labels = np.asarray(seg.dataobj)
    assert labels.shape[:3] == (40, 96, 16) and set(np.unique(labels)) <= set(range(6))
    assert np.allclose(seg.affine, nib.load(slab).affine)  # label map on the input's grid

    monai.bundle.ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"),
                             ckpt_file=str(tmp / "models" / "model.pt"),
                             meta_file=os.path.join(CONFIGS, "metadata.json"),
                             config_file=os.path.join(CONFIGS, "inference.json"), **common)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    parser = monai.bundle.ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "inference.json"))
    parser.update(common)
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.as_tensor(np.asarray(nib.load(slab).dataobj), dtype=torch.float32)[None, None] / 255.0
    with torch.no_grad():
        expected = sliding_window_inference(x, (24, 48, 16), 2, eager, overlap=0.25)
        got = sliding_window_inference(x, (24, 48, 16), 2, scripted, overlap=0.25)
    assert torch.allclose(got, expected, atol=1e-4)
    assert np.array_equal(expected.argmax(1)[0].numpy(), labels[..., 0] if labels.ndim == 4 else labels)


def test_student_alone_from_the_command_line(run, tmp_path):
    _, overrides, _, _ = run
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(CONFIGS, "train.json"),
            "--distill", "false", "--epochs", "1", "--bundle_root", BUNDLE,
            "--datalist_json", overrides["datalist_json"],
            "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
            "--student_channels", "[4, 8]", "--student_strides", "[2]"]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert "reprogrammer" not in ckpt  # no teacher, no Phi: the string "false" was read as False
    assert json.load(open(tmp_path / "eval" / "val_metrics.json"))["distill"] is False

    # the run's reading of the images is part of its fingerprint: resuming it on another voxel grid is refused
    resumed = subprocess.run([*args[:args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:],
                              "--resume", "true", "--pixdim", "[2,2,2]"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode != 0 and "reading" in resumed.stderr, resumed.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "models")) == ["checkpoint_epoch=1.pt", "model.pt", "model_meta.json"]
