"""The demo bundle's CLI with the adapted-teacher baselines: ``--method finetune`` and ``--method lora_kd``, trained and
tested end to end on a small subset of its real data (real EfficientNet-Lite0 teacher)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
CONFIGS = os.path.join(BUNDLE, "configs")

pytestmark = pytest.mark.slow  # two trainings and two evaluations, each a `python -m monai.bundle` process


def _run(tmp, method, config):
    full = json.load(open(os.path.join(CONFIGS, "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 2, "validation": 2, "test": 2}.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    (tmp / "datalist.json").write_text(json.dumps(sub))
    options = ["--bundle_root", BUNDLE, "--datalist_json", str(tmp / "datalist.json"),
               "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"), "--method", method,
               "--epochs", "1", "--batch_size", "5"]
    out = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *options],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


_RUNS = {}


def _trained(method, tmp_path_factory):
    """Train and test ``method`` once per session (shared by the tests below)."""
    if method not in _RUNS:
        tmp = tmp_path_factory.mktemp(method)
        train = os.path.join(CONFIGS, "train.json")
        log = _run(tmp, method, train)
        _run(tmp, method, f"['{train}','{os.path.join(CONFIGS, 'evaluate.json')}']")
        _RUNS[method] = (method, tmp, log)
    return _RUNS[method]


@pytest.fixture(scope="module", params=["finetune", "lora_kd"])
def trained(request, tmp_path_factory):
    return _trained(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    return _trained("finetune", tmp_path_factory)


def test_the_teacher_is_adapted_before_the_run_and_the_run_is_tested(trained):
    """Catches the CLI skipping the adaptation stage or failing to evaluate the saved model."""
    method, tmp, log = trained
    assert f"teacher adapted ({'finetune' if method == 'finetune' else 'lora'}" in log
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and torch.tensor(test["final"]["confusion_matrix"]).sum() == 10
    state = torch.load(tmp / "models" / "model.pt", weights_only=True)
    teacher_keys = [k for k in state if k.startswith("teacher.")]
    if method == "lora_kd":  # the deployed model is the student: no teacher in it
        assert not teacher_keys and any(k.startswith("head") or "backbone" in k for k in state)
    else:
        assert teacher_keys and {"probe.linear.weight", "probe.linear.bias"} <= set(state)


def test_finetune_model_round_trips_through_the_evaluate_config(finetuned):
    """Catches model.pt missing the fine-tuned weights: the evaluate config would rebuild the unadapted teacher."""
    _, tmp, _ = finetuned
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")])
    parser.update({"bundle_root": BUNDLE, "datalist_json": str(tmp / "datalist.json"), "ckpt_dir": str(tmp / "models"),
                   "output_dir": str(tmp / "eval"), "method": "finetune", "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network")
    fresh = {k: v.clone() for k, v in network.teacher.model.state_dict().items()}
    network.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True))  # strict
    adapted = network.teacher.model.state_dict()
    assert any(not torch.equal(adapted[k], fresh[k]) for k in fresh)  # the fine-tuned weights came back
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    datalist = json.load(open(tmp / "datalist.json"))
    transform = parser.get_parsed_content("validate#preprocessing")
    items = [transform({"image": os.path.join(BUNDLE, "data", it["image"]), "label": it["label"]})
             for it in datalist["validation"]]
    with torch.no_grad():
        pred = network.eval()(torch.stack([it["image"] for it in items])).argmax(1)
    labels = torch.tensor([it["label"] for it in items])
    assert float((pred == labels).float().mean()) == pytest.approx(val["best_metric"])
