"""benchmarks/suite/run_suite.py on a tiny generated task: one seed, one epoch, probe/student/rd through the
own-data bundle, and a summary whose numbers are the runs' own metrics."""

import csv
import json
import math

import numpy as np
import pytest
from suite_modules import load_suite_module  # tests/benchmarks, on sys.path under pytest

make_tasks, run_suite = load_suite_module("make_tasks"), load_suite_module("run_suite")


def test_wilson_interval_and_gap():
    """Catches a normal-approximation interval (it would leave [0, 1] at p = 1) and a gap of the wrong sign/scale."""
    lo, hi = run_suite.wilson_interval(0.5, 120)
    assert lo == pytest.approx(0.4113, abs=1e-3) and hi == pytest.approx(0.5887, abs=1e-3)
    lo, hi = run_suite.wilson_interval(1.0, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-3)
    assert run_suite.gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert run_suite.gap_closed(0.55, 0.6, 0.8) == pytest.approx(-0.25)
    assert run_suite.gap_closed(0.7, 0.8, 0.8) is None


def test_epoch_curves_average_each_epoch_over_the_seeds_that_reached_it(tmp_path):
    """Catches curves averaged over the wrong key (the teacher branch for the student), over epochs instead of seeds,
    or out of epoch order, a teacher-branch curve invented for a run without one, and an unfinished run (no test
    metrics, so not in the table) averaged in."""
    histories = {
        0: [{"epoch": 2, "accuracy": 0.5, "teacher_branch_accuracy": 0.8},
            {"epoch": 1, "accuracy": 0.2, "teacher_branch_accuracy": 0.6}],
        1: [{"epoch": 1, "accuracy": 0.4, "teacher_branch_accuracy": 0.7}],  # finished with one epoch
        2: [{"epoch": 1, "accuracy": 0.9, "teacher_branch_accuracy": 0.9}],  # still training: no test metrics
    }
    for seed, history in histories.items():
        run = tmp_path / "runs" / "rd" / "resnet18" / f"seed{seed}" / "eval"
        run.mkdir(parents=True)
        (run / "val_metrics.json").write_text(json.dumps({"history": history}))
        if seed != 2:
            (run / "test_metrics.json").write_text(json.dumps({"final": {"accuracy": 0.5}}))
    curves = run_suite.epoch_curves(str(tmp_path), "rd", "resnet18", [0, 1, 2])
    assert curves["student"] == pytest.approx([0.3, 0.5])
    assert curves["teacher_branch"] == pytest.approx([0.65, 0.8])
    alone = tmp_path / "runs" / "student" / "resnet18" / "seed0" / "eval"
    alone.mkdir(parents=True)
    (alone / "val_metrics.json").write_text(json.dumps({"history": [{"epoch": 1, "accuracy": 0.3}]}))
    (alone / "test_metrics.json").write_text(json.dumps({"final": {"accuracy": 0.3}}))
    curves = run_suite.epoch_curves(str(tmp_path), "student", "resnet18", [0])
    assert curves == {"student": [0.3], "teacher_branch": []}


@pytest.mark.slow
def test_summary_numbers_come_from_the_runs_metrics(tmp_path):
    """Catches a summary that mixes up methods or tasks, averages the wrong file (validation for test) or takes the
    teacher-branch accuracy from a run without Phi."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 48), dtype=np.uint8)
    atlas = np.zeros(image.shape, np.int32)
    atlas[:20], atlas[20:] = 1, 2
    image[20:] //= 2  # a learnable difference between the classes
    task = tmp_path / "tasks" / "tiny"
    datalist = make_tasks.derive_task(
        image, atlas, {"left": (1,), "right": (2,)}, str(task), axis=2, patch=16,
        per_class={"training": 2, "validation": 2, "test": 3}, min_train=2, meta={"image_size": 16, "in_channels": 1},
    )
    methods = ["probe", "student", "rd"]
    status = run_suite.main([
        "--tasks_dir", str(tmp_path / "tasks"), "--tag", "smoke", "--results", str(tmp_path / "results"),
        "--methods", *methods, "--seeds", "0", "--set", "epochs=1", "batch_size=2",
    ])
    assert status == 0
    folder = tmp_path / "results" / "smoke"
    rows = {r["method"]: r for r in csv.DictReader(open(folder / "summary.csv"))}
    acc = {}
    for method in methods:
        run = folder / "tiny" / "runs" / method / "resnet18" / "seed0" / "eval"
        acc[method] = json.load(open(run / "test_metrics.json"))["final"]["accuracy"]
        row = rows[method]
        assert row["task"] == "tiny" and row["seeds"] == "1" and row["n_test"] == str(len(datalist["test"]))
        assert float(row["accuracy_mean"]) == pytest.approx(acc[method])
        lo, hi = run_suite.wilson_interval(acc[method], len(datalist["test"]))
        assert float(row["wilson95_low"]) == pytest.approx(lo) and float(row["wilson95_high"]) == pytest.approx(hi)
        if method == "rd":
            last = json.load(open(run / "val_metrics.json"))["history"][-1]
            assert float(row["teacher_branch_val_accuracy"]) == pytest.approx(last["teacher_branch_accuracy"])
            assert float(row["student_val_accuracy"]) == pytest.approx(last["accuracy"])
        else:
            assert row["teacher_branch_val_accuracy"] == ""
    gap = run_suite.gap_closed(acc["rd"], acc["student"], acc["probe"])
    assert (rows["rd"]["gap_closed"] == "") if gap is None else math.isclose(float(rows["rd"]["gap_closed"]), gap)
    summary = (folder / "summary.md").read_text()
    assert "| tiny | rd | 1 |" in summary and "Mean over tasks" in summary
    assert (folder / "curves.png").stat().st_size > 0 and (folder / "accuracy.png").stat().st_size > 0
