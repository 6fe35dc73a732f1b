"""Every command of the README's and docs/ pages' bash blocks that runs on the demo (`python -m monai.bundle`,
`torchrun`, `python -m monai_rd.export`, `python -m monai_rd.compare`), and every `python -m monai.bundle` command of
the demo's docs, run exactly as typed there.

The commands run in a scratch copy of the repository root whose demo bundle has a smaller datalist (35 training,
10 validation, 10 test patches of the real data), so the defaults (15 epochs, batch 32) finish in seconds; the
commands themselves are not changed, except that the comparison grid gets `--set epochs=1` appended (each of its
runs is a whole training). Flags reach the bundle as the command line passes them (`--distill false` as the string
"false"), which is what the Python API cannot test. Commands with a `<placeholder>` (your own data's) are run by
tests/bundles/test_rd_classify.py, with the placeholders filled in.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from doc_commands import PLACEHOLDER, doc_commands, doc_variables  # tests/bundles, on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = "bundles/rd_demo"
# document -> the command starts this test runs from it; in this order, so that each command finds what the ones
# before it wrote (the README's training, then evaluation, inference, export, ...)
DOCS = {
    "README.md": ("python -m monai.bundle",),
    "docs/bundles.md": ("python -m monai.bundle",),
    "docs/methods.md": ("python -m monai.bundle", "python -m monai_rd.compare"),
    "docs/multi_gpu.md": ("torchrun ",),
    "docs/export.md": ("python -m monai.bundle", "python -m monai_rd.export"),
    f"{DEMO}/docs/README.md": ("python -m monai.bundle",),
}
COMPARE_OVERRIDES = " --set epochs=1"

pytestmark = pytest.mark.slow


def documented_commands() -> list[str]:
    """The commands this test runs, as typed in :data:`DOCS`, in document order (a command given in two documents
    once per document), those with a placeholder left out."""
    return [c for doc, prefixes in DOCS.items() for c in doc_commands(doc, prefixes) if not PLACEHOLDER.search(c)]


def _as_run(command: str) -> str:
    """The command as bash runs it with the documents' ``B``: a command written with and without it runs once."""
    return command.replace("$B/", f"{DEMO}/configs/")


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
    # `python` and `torchrun` as the docs type them: this interpreter's, where monai_rd is installed
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    run = subprocess.run(["bash", "-c", f"B={DEMO}/configs; {command}"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


def test_every_documented_command_runs_as_typed(root):
    """Catches a documented command that fails (a moved module, a renamed option), `--distill false` not reaching the
    bundle as False, `--phi_hidden null` not building the paper's Phi, `--overwrite` deleting instead of moving, the
    test split or the predictions not being what the commands say, an export that writes nothing, a torchrun job
    writing one rank's outputs, and a comparison grid missing runs."""
    assert all(doc_variables(doc) in ("", f"B={DEMO}/configs; ") for doc in DOCS)  # the one B this test sets
    commands = list(dict.fromkeys(map(_as_run, documented_commands())))
    assert len(commands) >= 15 and any("--distill false" in c for c in commands)
    for start in ("torchrun ", "python -m monai_rd.export", "python -m monai_rd.compare"):
        assert any(c.startswith(start) for c in commands), start
    for command in commands:
        if command.startswith("python -m monai_rd.compare"):
            assert "--set" not in command, "append the epochs to the command's own --set list"
            command += COMPARE_OVERRIDES
        _run(command, root)
    models, evald = root / DEMO / "models", root / DEMO / "eval"
    # the student alone really trained alone: `false` typed on the command line is False
    alone = torch.load(next((models / "alone").glob("checkpoint_epoch=*.pt")), weights_only=True)
    assert "reprogrammer" not in alone and "network" in alone
    assert json.load(open(evald / "alone" / "val_metrics.json"))["distill"] is False
    # `--phi_hidden null` built the paper's Φ (no bottleneck)
    paper = torch.load(next((models / "paper_phi").glob("checkpoint_epoch=*.pt")), weights_only=True)
    rd = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert sum(v.numel() for v in paper["reprogrammer"].values()) > 10 * sum(
        v.numel() for v in rd["reprogrammer"].values()
    )
    # --overwrite moved the first run aside; the second (2 epochs) is what the folder holds now
    assert list(models.glob("checkpoint_epoch=2.pt")) and list(models.glob("replaced-*/model.pt"))
    test = json.load(open(evald / "test_metrics.json"))
    assert test["split"] == "test" and "best_metric_epoch" not in test
    rows = list(csv.reader(open(evald / "predictions.csv")))
    assert rows[0] == ["image", "cerebellum", "frontal", "occipital", "parietal", "temporal", "predicted"]
    assert len(rows) - 1 == len(os.listdir(root / DEMO / "data" / "frontal"))
    assert os.path.getsize(models / "model.ts") > 1000 and os.path.getsize(models / "model.onnx") > 1000
    # the two-process run wrote one set of outputs (rank 0), from both ranks' validation images
    ddp = json.load(open(evald / "ddp" / "val_metrics.json"))
    assert sum(map(sum, ddp["history"][-1]["confusion_matrix"])) == 10
    # the comparison grid: one tested run per method and seed of the documented command
    grid = next(c for c in commands if c.startswith("python -m monai_rd.compare")).split()
    methods = grid[grid.index("--methods") + 1:grid.index("--seeds")]
    seeds = grid[grid.index("--seeds") + 1:grid.index("--out")]
    out = root / grid[grid.index("--out") + 1]
    ran = [(r["method"], r["seed"]) for r in csv.DictReader(open(out / "results.csv"))]
    assert sorted(ran) == sorted((m, s) for m in methods for s in seeds)
    assert (out / "results.md").is_file()


def test_a_mistyped_flag_stops_at_once_with_a_message_naming_it(root, tmp_path):
    """Catches an on/off option that accepts a typo (`flase`) silently, or an error that is not the last line."""
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{DEMO}/configs/train.json",
         "--distill", "flase", "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "e")],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    last = [line for line in run.stderr.strip().splitlines() if line.strip()][-2]
    assert last.startswith("monai_rd: OptionError: --distill must be true or false")
    assert not os.path.exists(tmp_path / "m" / "model.pt")
