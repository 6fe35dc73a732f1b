"""``python -m monai_rd.compare`` end to end on the demo bundle's real data (a tiny grid), then run again."""

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # four trainings and four evaluations, each a `python -m monai.bundle` process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    full = json.load(open(os.path.join(BUNDLE, "configs", "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 4, "validation": 2, "test": 2}.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    (tmp / "datalist.json").write_text(json.dumps(sub))
    cmd = [sys.executable, "-m", "monai_rd.compare", "--bundle", BUNDLE, "--methods", "student", "kd",
           "--seeds", "0", "1", "--out", str(tmp / "compare"),
           "--set", "epochs=1", "batch_size=5", f"datalist_json={tmp / 'datalist.json'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=str(tmp))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp / "compare", cmd, first.stdout


def test_progress_lines_and_eta(grid):
    _, _, stdout = grid
    lines = stdout.splitlines()
    assert lines[0] == "grid: 4 runs, 0 already tested, 4 to run"
    done = [ln for ln in lines if ": done in " in ln]
    assert [ln.split(":")[0] for ln in done] == [
        "[1/4] student / resnet18 / seed 0", "[2/4] student / resnet18 / seed 1",
        "[3/4] kd / resnet18 / seed 0", "[4/4] kd / resnet18 / seed 1"]
    assert all("ETA" in ln for ln in done[:3]) and done[3].endswith("grid complete")


def test_csv_rows_are_the_runs_test_metrics_and_the_deployed_student(grid):
    out, _, _ = grid
    from monai_rd.networks import StudentClassifier

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["student"], r["seed"]) for r in rows] == [
        ("student", "resnet18", "0"), ("student", "resnet18", "1"), ("kd", "resnet18", "0"), ("kd", "resnet18", "1")]
    params = sum(p.numel() for p in StudentClassifier("resnet18", num_classes=5, in_channels=1).parameters())
    for r in rows:
        test = json.load(open(out / r["run_dir"] / "eval" / "test_metrics.json"))
        assert test["split"] == "test"
        assert float(r["accuracy"]) == pytest.approx(test["final"]["accuracy"])
        assert float(r["auc"]) == pytest.approx(test["final"]["auc"]) and r["n_test"] == "10"
        assert int(r["deployed_params"]) == params and float(r["latency_ms"]) > 0
        models = os.listdir(out / r["run_dir"] / "models")
        assert "model.pt" in models and not [f for f in models if f.startswith("checkpoint")]  # removed once tested


def test_markdown_table_and_plots(grid):
    out, _, _ = grid
    md = (out / "results.md").read_text().splitlines()
    assert md[2] == "| method | resnet18 accuracy | resnet18 AUC |"
    assert md[4].startswith("| student | ") and md[5].startswith("| kd | ") and "±" in md[4]
    for png in ("accuracy.png", "confusion_resnet18.png", "accuracy_vs_cost.png"):
        assert (out / png).stat().st_size > 5000


def test_a_second_invocation_skips_finished_runs(grid):
    out, cmd, _ = grid
    metrics = sorted(out.glob("runs/*/*/seed*/eval/test_metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    table = (out / "results.csv").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(out.parent))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[0] == "grid: 4 runs, 4 already tested, 0 to run"
    assert len(metrics) == 4 and {p: p.stat().st_mtime_ns for p in metrics} == before
    assert (out / "results.csv").read_text() == table
