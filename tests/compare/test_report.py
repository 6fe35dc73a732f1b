import csv
import math

import numpy as np
import pytest

from monai_rd.compare.report import CSV_FIELDS, summarise, wilson_interval, write_csv, write_markdown, write_plots


def test_wilson_interval_matches_the_closed_form():
    # p = 0.5 on 100 trials: 0.5 +- 1.96 * sqrt(0.25 / 100 + 1.96^2 / 40000) / (1 + 1.96^2 / 100)
    lo, hi = wilson_interval(0.5, 100)
    assert (lo, hi) == (pytest.approx(0.40383, abs=1e-4), pytest.approx(0.59617, abs=1e-4))
    lo, hi = wilson_interval(0.0, 120)  # never below 0, and not degenerate at 0 like the Wald interval
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / 120 / (1 + 1.959964**2 / 120), rel=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))


def _rows():
    cm = lambda k: [[k, 10 - k], [2, 8]]  # noqa: E731
    rows = []
    for method, accs in (("student", [0.5, 0.6, 0.7]), ("rd", [0.8, 0.8, 0.9])):
        for seed, acc in enumerate(accs):
            rows.append({"method": method, "student": "resnet18", "seed": seed, "accuracy": acc, "auc": acc + 0.1,
                         "n_test": 20, "deployed_params": 1000, "latency_ms": 2.0 + seed, "run_dir": f"r/{seed}",
                         "confusion_matrix": cm(seed + 5), "class_names": ["a", "b"]})
    return rows


def test_summary_is_mean_and_sample_sd_over_seeds_with_the_interval_on_the_test_images():
    s = summarise(_rows())
    r = s[("student", "resnet18")]
    assert r["seeds"] == [0, 1, 2] and r["accuracy"] == pytest.approx(0.6) and r["accuracy_sd"] == pytest.approx(0.1)
    assert r["auc"] == pytest.approx(0.7) and r["accuracy_per_seed"] == [0.5, 0.6, 0.7]
    assert r["accuracy_ci95"] == pytest.approx(wilson_interval(0.6, 20))
    np.testing.assert_array_equal(r["confusion_matrix"], [[5 + 6 + 7, 5 + 4 + 3], [6, 24]])  # summed over seeds
    assert r["latency_ms"] == pytest.approx(3.0)


def test_markdown_is_method_rows_by_student_columns(tmp_path):
    rows = _rows() + [{**_rows()[0], "student": "mobilenetv2", "method": "rd"}]
    path = tmp_path / "results.md"
    write_markdown(summarise(rows), str(path), ["student", "rd"], ["resnet18", "mobilenetv2"], "demo", {"rd": "RD"})
    lines = path.read_text().splitlines()
    assert lines[0] == "# demo"
    assert lines[2] == "| method | resnet18 accuracy | resnet18 AUC | mobilenetv2 accuracy | mobilenetv2 AUC |"
    lo, hi = wilson_interval(0.6, 20)
    assert lines[4] == f"| student | 0.600 ± 0.100 [{lo:.2f}, {hi:.2f}] | 0.700 ± 0.100 | – | – |"
    assert lines[5].startswith("| rd | 0.833 ± 0.058 [")
    assert lines[5].endswith("| 0.500 ± 0.000 [0.30, 0.70] | 0.600 ± 0.000 |")
    assert "| rd | resnet18 | 3 | 0.800, 0.800, 0.900 | 0.00 M | 3.0 |" in lines
    assert "- `rd`: RD" in lines


def test_csv_has_one_row_per_run_and_plots_are_written(tmp_path):
    rows = _rows()
    write_csv(rows, str(tmp_path / "results.csv"))
    read = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert tuple(read[0]) == CSV_FIELDS and len(read) == 6
    firsts = [(r["method"], r["seed"], r["accuracy"]) for r in read[:2]]
    assert firsts == [("student", "0", "0.5"), ("student", "1", "0.6")]
    files = write_plots(summarise(rows), str(tmp_path), ["student", "rd"], ["resnet18"])
    assert [f.rsplit("/", 1)[-1] for f in files] == ["accuracy.png", "confusion_resnet18.png", "accuracy_vs_cost.png"]
    assert all((tmp_path / f.rsplit("/", 1)[-1]).stat().st_size > 5000 for f in files)
