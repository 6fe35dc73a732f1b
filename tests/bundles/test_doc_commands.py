"""Every `python -m monai.bundle` (and `torchrun ... -m monai.bundle`) command of the README and the demo docs, run
exactly as typed there.

The commands run in a scratch copy of the repository root whose demo bundle has a smaller datalist (35 training,
10 validation, 10 test patches of the real data), so the defaults (15 epochs, batch 32) finish in seconds; the
commands themselves are not changed. Flags reach the bundle as the command line passes them (`--distill false`
as the string "false"), which is what the Python API cannot test.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from doc_commands import doc_commands  # tests/bundles, on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ("README.md", "bundles/rd_demo/docs/README.md")
DEMO = "bundles/rd_demo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    configs = root / DEMO / "configs"
    shutil.copytree(os.path.join(REPO, DEMO, "configs"), configs)
    os.symlink(os.path.join(REPO, DEMO, "data"), root / DEMO / "data")
    os.symlink(os.path.join(REPO, "monai_rd"), root / "monai_rd")  # as in a checkout: the package beside bundles/
    full = json.load(open(configs / "datalist.json"))
    small = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 7, "validation": 2, "test": 2}.items():
        small[split] = [it for c in range(5) for it in [i for i in full[split] if i["label"] == c][:k]]
    (configs / "datalist.json").write_text(json.dumps(small))
    return root


def _run(command, cwd):
    run = subprocess.run(["bash", "-c", f"B={DEMO}/configs; {command}"], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
    return run


def test_every_documented_command_runs_as_typed(root):
    commands = list(dict.fromkeys(c for doc in DOCS for c in doc_commands(doc)))
    assert len(commands) >= 10 and any("--distill false" in c for c in commands)
    assert any(c.startswith("torchrun ") for c in commands)
    for command in commands:
        _run(command, root)
    models, evald = root / DEMO / "models", root / DEMO / "eval"
    # the student alone really trained alone: `false` typed on the command line is False
    alone = torch.load(next((models / "alone").glob("checkpoint_epoch=*.pt")), weights_only=True)
    assert "reprogrammer" not in alone and "network" in alone
    assert json.load(open(evald / "alone" / "val_metrics.json"))["distill"] is False
    # `--phi_hidden null` built the paper's Φ (no bottleneck)
    paper = torch.load(next((models / "paper_phi").glob("checkpoint_epoch=*.pt")), weights_only=True)
    rd = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert sum(v.numel() for v in paper["reprogrammer"].values()) > 10 * sum(v.numel() for v in rd["reprogrammer"].values())
    # --overwrite moved the first run aside; the second (2 epochs) is what the folder holds now
    assert list(models.glob("checkpoint_epoch=2.pt")) and list(models.glob("replaced-*/model.pt"))
    test = json.load(open(evald / "test_metrics.json"))
    assert test["split"] == "test" and "best_metric_epoch" not in test
    rows = list(csv.reader(open(evald / "predictions.csv")))
    assert rows[0] == ["image", "cerebellum", "frontal", "occipital", "parietal", "temporal", "predicted"]
    assert len(rows) - 1 == len(os.listdir(root / DEMO / "data" / "frontal"))
    assert os.path.getsize(models / "model.ts") > 1000
    # the two-process run wrote one set of outputs (rank 0), from both ranks' validation images
    ddp = json.load(open(evald / "ddp" / "val_metrics.json"))
    assert sum(map(sum, ddp["history"][-1]["confusion_matrix"])) == 10


def test_a_mistyped_flag_stops_at_once_with_a_message_naming_it(root, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{DEMO}/configs/train.json", "--distill", "flase",
         "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "e")],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    last = [line for line in run.stderr.strip().splitlines() if line.strip()][-2]
    assert last.startswith("monai_rd: OptionError: --distill must be true or false")
    assert not os.path.exists(tmp_path / "m" / "model.pt")
