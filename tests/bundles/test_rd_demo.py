"""A tiny run of the demo bundle through monai.bundle: train, evaluate, export, infer, resume."""

import csv
import json
import os

import pytest
import torch

import monai.bundle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
CONFIGS = os.path.join(BUNDLE, "configs")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small subset of the real demo split (real MRI patches, real EfficientNet-Lite0 teacher)."""
    tmp = tmp_path_factory.mktemp("rd_demo")
    full = json.load(open(os.path.join(CONFIGS, "datalist.json")))
    per_class = {"training": 4, "validation": 2, "test": 2}
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in per_class.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    with open(tmp / "datalist.json", "w") as f:
        json.dump(sub, f)
    overrides = {
        "bundle_root": BUNDLE,
        "dataset_dir": os.path.join(BUNDLE, "data"),
        "datalist_json": str(tmp / "datalist.json"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "epochs": 2,
        "batch_size": 5,
    }
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **overrides)
    return tmp, overrides, sub


def test_training_writes_model_metrics_and_curve(tiny):
    tmp, _, _ = tiny
    assert os.path.isfile(tmp / "models" / "model.pt")
    assert os.path.isfile(tmp / "models" / "checkpoint_final.pt")
    assert os.path.getsize(tmp / "eval" / "training_curve.png") > 1000
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1, 2]
    assert 0.0 <= val["final"]["accuracy"] <= 1.0
    cm = torch.tensor(val["final"]["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == 10  # 2 validation images per class
    ckpt = torch.load(tmp / "models" / "checkpoint_final.pt", weights_only=False)
    assert {"network", "reprogrammer", "optimizer", "trainer", "lr_scheduler"} <= set(ckpt)
    assert not any(k.startswith("teacher") for k in ckpt["network"])  # the teacher is never saved


def test_evaluate_reports_test_split_from_selected_checkpoint(tiny):
    tmp, overrides, _ = tiny
    monai.bundle.run(config_file=[os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")], **overrides)
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test"
    assert test["checkpoint"].endswith("model.pt")
    assert torch.tensor(test["final"]["confusion_matrix"]).sum() == 10
    assert len(test["final"]["recall_per_class"]) == 5


def test_export_matches_eager_and_inference_writes_probabilities(tiny):
    tmp, overrides, sub = tiny
    ts_path = str(tmp / "model.ts")
    monai.bundle.ckpt_export(
        net_id="network_def",
        filepath=ts_path,
        ckpt_file=str(tmp / "models" / "model.pt"),
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        config_file=os.path.join(CONFIGS, "inference.json"),
        bundle_root=BUNDLE,
    )
    scripted = torch.jit.load(ts_path)
    parser = monai.bundle.ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "inference.json"))
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-5)

    images = tmp / "images"
    images.mkdir()
    for it in sub["test"][:3]:
        src = os.path.join(BUNDLE, "data", it["image"])
        (images / os.path.basename(src)).write_bytes(open(src, "rb").read())
    monai.bundle.run(
        config_file=os.path.join(CONFIGS, "inference.json"),
        bundle_root=BUNDLE,
        ckpt_dir=str(tmp / "models"),
        output_dir=str(tmp / "infer"),
        input_dir=str(images),
    )
    rows = list(csv.reader(open(tmp / "infer" / "predictions.csv")))
    assert len(rows) == 3
    probs = torch.tensor([[float(v) for v in r[1:]] for r in rows])
    assert probs.shape == (3, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(3), atol=1e-4, rtol=0)


def test_resume_continues_from_the_final_checkpoint(tiny):
    tmp, overrides, _ = tiny
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **{**overrides, "epochs": 3, "resume": True})
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [3]  # epochs 1-2 came from the checkpoint
    ckpt = torch.load(tmp / "models" / "checkpoint_final.pt", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 3 * ckpt["trainer"]["epoch_length"]


def test_student_alone_needs_no_teacher(tiny, tmp_path):
    _, overrides, _ = tiny
    # a teacher that cannot be built proves the baseline never builds one
    run = {**overrides, "distill": False, "teacher_name": "no-such-teacher", "epochs": 1,
           "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **run)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=False)
    assert "reprogrammer" not in ckpt and "network" in ckpt
    assert json.load(open(tmp_path / "eval" / "val_metrics.json"))["distill"] is False
