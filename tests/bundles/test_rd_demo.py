"""The demo bundle end to end on a subset of its real data: training outputs, schedules, evaluation, resume."""

import csv
import json
import os
import subprocess
import sys
import time

import monai.bundle
import pytest
import torch
from demo_subset import write_demo_subset  # tests/bundles, on sys.path under pytest
from ignite.engine import Events

from monai_rd.errors import CheckpointMismatchError, OutputFolderError, find_rd_error
from monai_rd.handlers import LinearLossWeight

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
CONFIGS = os.path.join(BUNDLE, "configs")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two epochs on a small subset of the real demo split (real MRI patches, real EfficientNet-Lite0 teacher)."""
    tmp = tmp_path_factory.mktemp("rd_demo")
    sub = write_demo_subset(tmp / "datalist.json", {"training": 4, "validation": 2, "test": 2})
    overrides = {
        "bundle_root": BUNDLE,
        "datalist_json": str(tmp / "datalist.json"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "epochs": 2,
        "batch_size": 5,
    }
    workflow = monai.bundle.ConfigWorkflow(config_file=os.path.join(CONFIGS, "train.json"), workflow_type="train",
                                           **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    weights = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: weights.append((e.loss_function.alpha, e.loss_function.beta))
    )
    workflow.run()
    return tmp, overrides, sub, weights


def test_training_writes_model_metrics_and_curve(tiny):
    tmp, _, _, _ = tiny
    assert os.path.isfile(tmp / "models" / "model.pt")
    assert sorted(p for p in os.listdir(tmp / "models") if p.startswith("checkpoint")) == ["checkpoint_epoch=2.pt"]
    assert os.path.getsize(tmp / "eval" / "training_curve.png") > 1000
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1, 2]
    for h in val["history"]:  # accuracy is the confusion matrix's trace over its sum, 2 validation images per class
        cm = torch.tensor(h["confusion_matrix"])
        assert cm.shape == (5, 5) and cm.sum() == 10 and cm.sum(1).tolist() == [2] * 5
        assert h["accuracy"] == pytest.approx(float(cm.trace()) / 10)
    best = max(val["history"], key=lambda h: h["accuracy"])
    assert val["best_metric"] == pytest.approx(best["accuracy"]) and val["best_metric_epoch"] == best["epoch"]
    ckpt = torch.load(tmp / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert {"network", "reprogrammer", "optimizer", "trainer", "lr_scheduler", "run_state"} <= set(ckpt)
    assert not any(k.startswith("teacher") for k in ckpt["network"])  # the teacher is never saved
    assert oct(os.stat(tmp / "eval" / "val_metrics.json").st_mode & 0o777) != oct(0o600)


def test_alpha_beta_decay_from_one_to_zero_over_the_real_run(tiny):
    _, _, _, weights = tiny
    n = 2 * 4  # 2 epochs of 20 training images in batches of 5
    assert len(weights) == n
    expected = [1.0 - i / n for i in range(1, n + 1)]  # set before each iteration from its number
    assert [a for a, _ in weights] == pytest.approx(expected) and [b for _, b in weights] == pytest.approx(expected)
    assert weights[-1] == (0.0, 0.0)


@pytest.mark.parametrize("method, alpha_end", [("rd", 0.25), ("rd_no_cotrain", 0.0)])
def test_alpha_beta_end_values_as_the_command_line_gives_them(tmp_path, method, alpha_end):
    """Catches --alpha_end/--beta_end ignored, swapped, read as strings, or overriding a method's fixed alpha."""
    write_demo_subset(tmp_path / "datalist.json", {"training": 4, "validation": 2, "test": 2})
    parser = monai.bundle.ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "train.json"))
    cli = {"bundle_root": BUNDLE, "datalist_json": str(tmp_path / "datalist.json"), "epochs": "2", "batch_size": "5",
           "method": method, "alpha_start": "0.5", "alpha_end": "0.25", "beta_end": "1",
           "ckpt_dir": str(tmp_path / "m"), "output_dir": str(tmp_path / "e")}
    parser.update(cli)
    method_def = parser.get_parsed_content("method_def")  # the teacher and cache as initialize builds them
    method_def.prepare(parser.get_parsed_content("datalist"), parser.get_parsed_content("base_transforms"),
                       parser.get_parsed_content("train#augmentation"))
    loss = parser.get_parsed_content("loss")
    trainer = parser.get_parsed_content("train#trainer")
    schedules = {h.name: h for h, *_ in trainer._event_handlers[Events.ITERATION_STARTED]
                 if isinstance(h, LinearLossWeight)}
    total = 2 * 4  # 2 epochs of 20 training images in batches of 5
    assert trainer.state.epoch_length * 2 == total
    seen = []
    for step in (0, total // 2, total):
        state = type("State", (), {"iteration": step, "epoch": 1})()
        for name in ("alpha", "beta"):
            schedules[name](type("Engine", (), {"state": state})())
        seen.append((loss.alpha, loss.beta))
    alpha_start = 0.5 if method == "rd" else 0.0  # rd_no_cotrain fixes alpha to 0 from start to end
    expected = [(alpha_start, 1.0), ((alpha_start + alpha_end) / 2, 1.0), (alpha_end, 1.0)]
    # flat lists: pytest 9 refuses approx on nested sequences
    assert [v for pair in seen for v in pair] == pytest.approx([v for pair in expected for v in pair])


def test_evaluation_equals_the_deployed_models_predictions(tiny, tmp_path):
    tmp, overrides, sub, _ = tiny
    monai.bundle.run(
        config_file=[os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")], **overrides
    )
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and test["checkpoint"].endswith("model.pt") and "best_metric_epoch" not in test
    assert torch.tensor(test["final"]["confusion_matrix"]).sum() == 10
    # the same test images through inference.json: its argmax accuracy is the evaluation's accuracy
    images = tmp_path / "images"
    images.mkdir()
    labels = {}
    for it in sub["test"]:
        name = os.path.basename(it["image"])
        (images / name).write_bytes(open(os.path.join(BUNDLE, "data", it["image"]), "rb").read())
        labels[name] = sub["classes"][it["label"]]
    monai.bundle.run(config_file=os.path.join(CONFIGS, "inference.json"), bundle_root=BUNDLE,
                     ckpt_dir=str(tmp / "models"), output_dir=str(tmp_path / "infer"), input_dir=str(images))
    rows = list(csv.DictReader(open(tmp_path / "infer" / "predictions.csv")))
    assert len(rows) == 10
    hits = [r["predicted"] == labels[os.path.basename(r["image"])] for r in rows]
    assert test["final"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    probs = torch.tensor([[float(r[c]) for c in sub["classes"]] for r in rows])
    torch.testing.assert_close(probs.sum(1), torch.ones(10), atol=1e-4, rtol=0)


def test_a_second_run_never_replaces_the_first_silently(tiny):
    tmp, overrides, _, _ = tiny
    before = (tmp / "models" / "model.pt").read_bytes()
    with pytest.raises(Exception) as info:
        monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **overrides)
    assert isinstance(find_rd_error(info.value), OutputFolderError)
    assert (tmp / "models" / "model.pt").read_bytes() == before


def test_resume_with_other_settings_is_refused(tiny):
    tmp, overrides, _, _ = tiny
    with pytest.raises(Exception) as info:
        monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **{**overrides, "epochs": 3, "resume": True})
    err = find_rd_error(info.value)
    assert isinstance(err, CheckpointMismatchError) and "epochs: checkpoint 2, now 3" in str(err)


def test_student_alone_needs_no_teacher(tiny, tmp_path):
    _, overrides, _, _ = tiny
    # a teacher that cannot be built proves the baseline never builds one
    run = {**overrides, "distill": False, "teacher_name": "no-such-teacher", "epochs": 1,
           "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **run)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert "reprogrammer" not in ckpt and "network" in ckpt
    assert json.load(open(tmp_path / "eval" / "val_metrics.json"))["distill"] is False


def _train_cli(tmp, name, *extra):
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(CONFIGS, "train.json"),
            "--bundle_root", BUNDLE, "--datalist_json", str(tmp / "datalist.json"), "--epochs", "3",
            "--batch_size", "5", "--ckpt_dir", str(tmp / name / "models"), "--output_dir", str(tmp / name / "eval"),
            *extra]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    write_demo_subset(tmp_path / "datalist.json", {"training": 4, "validation": 2, "test": 2})
    subprocess.run(_train_cli(tmp_path, "whole"), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(_train_cli(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "models" / "checkpoint_epoch=2.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL during epoch 3 (or while epoch 2's checkpoint is still being renamed into place)
    proc.wait()
    assert ckpt.exists(), "the run ended before its second checkpoint"
    subprocess.run(_train_cli(tmp_path, "killed", "--resume", "true"), check=True, capture_output=True, timeout=600)

    whole = torch.load(tmp_path / "whole" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    for part in ("network", "reprogrammer", "optimizer"):
        flat_w = torch.utils._pytree.tree_flatten(whole[part])[0]
        flat_r = torch.utils._pytree.tree_flatten(resumed[part])[0]
        assert len(flat_w) == len(flat_r)
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(flat_w, flat_r)), part
    assert (tmp_path / "whole" / "models" / "model.pt").read_bytes() == (
        tmp_path / "killed" / "models" / "model.pt"
    ).read_bytes()
    metrics = [json.load(open(tmp_path / r / "eval" / "val_metrics.json")) for r in ("whole", "killed")]
    assert metrics[0]["history"] == metrics[1]["history"] and len(metrics[1]["history"]) == 3
    assert sorted(os.listdir(tmp_path / "killed" / "models")) == [
        "checkpoint_epoch=3.pt", "model.pt", "model_meta.json"
    ]


def test_evaluation_inference_and_export_use_the_models_own_size_and_classes(tmp_path):
    from monai.transforms import Compose, LoadImage, Resize, ScaleIntensity

    from monai_rd.errors import OptionError
    from monai_rd.networks import StudentClassifier
    from monai_rd.transforms import ToGrayscale

    classes = ["frontal", "occipital", "parietal"]  # not the bundle's five lobes
    full = json.load(open(os.path.join(CONFIGS, "datalist.json")))
    keep = {full["classes"].index(c): i for i, c in enumerate(classes)}
    sub = {"classes": classes, "seed": full["seed"]}
    for split, k in {"training": 4, "validation": 2, "test": 2}.items():
        sub[split] = [
            {**it, "label": keep[it["label"]]} for c in keep for it in [i for i in full[split] if i["label"] == c][:k]
        ]
    (tmp_path / "datalist.json").write_text(json.dumps(sub))
    paths = {"bundle_root": BUNDLE, "datalist_json": str(tmp_path / "datalist.json"),
             "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **paths, epochs=1, batch_size=4,
                     image_size=48, class_names=classes)

    # evaluation with none of the training overrides: the model's 3 classes at 48 px
    evaluate = [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")]
    monai.bundle.run(config_file=evaluate, **paths)
    test = json.load(open(tmp_path / "eval" / "test_metrics.json"))
    assert test["class_names"] == classes and torch.tensor(test["final"]["confusion_matrix"]).shape == (3, 3)

    # inference likewise; its probabilities are the eager model's on the training preprocessing
    images = tmp_path / "images"
    images.mkdir()
    for it in sub["test"]:
        (images / os.path.basename(it["image"])).write_bytes(
            open(os.path.join(BUNDLE, "data", it["image"]), "rb").read()
        )
    monai.bundle.run(config_file=os.path.join(CONFIGS, "inference.json"), bundle_root=BUNDLE, input_dir=str(images),
                     ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "infer"))
    rows = list(csv.DictReader(open(tmp_path / "infer" / "predictions.csv")))
    assert list(rows[0]) == ["image", *classes, "predicted"]
    eager = StudentClassifier("resnet18", num_classes=3, in_channels=1)
    eager.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    eager.eval()
    prep = Compose(
        [LoadImage(image_only=True, ensure_channel_first=True), ToGrayscale(), ScaleIntensity(), Resize((48, 48))]
    )
    with torch.no_grad():
        x = torch.stack([torch.as_tensor(prep(r["image"])).float() for r in rows])
        expected = torch.softmax(eager(x), 1)
    got = torch.tensor([[float(r[c]) for c in classes] for r in rows])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    # export builds the same network from the model's spec, embedding the model's own description (the bundle's
    # metadata.json describes its 5 classes at 64 px, which ckpt_export refuses for this model)
    own_format = f"%{tmp_path / 'models' / 'model_meta.json'}#network_data_format"
    monai.bundle.ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"),
                             ckpt_file=str(tmp_path / "models" / "model.pt"),
                             meta_file=os.path.join(CONFIGS, "metadata.json"),
                             config_file=os.path.join(CONFIGS, "inference.json"),
                             bundle_root=BUNDLE, ckpt_dir=str(tmp_path / "models"),
                             **{"_meta_#network_data_format": own_format})
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(x), eager(x), atol=1e-5, rtol=1e-4)

    # an override that contradicts the model is refused, naming both values
    with pytest.raises(Exception) as info:
        monai.bundle.run(config_file=evaluate, **paths, image_size=64)
    err = find_rd_error(info.value)
    assert isinstance(err, OptionError) and "--image_size 64 contradicts the trained model's 48" in str(err)
