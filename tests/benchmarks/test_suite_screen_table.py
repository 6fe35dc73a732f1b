"""benchmarks/suite/screen_table.py: test accuracy per task for several variants, over one seed or several."""

import json
import os

import pytest
from suite_modules import load_suite_module  # tests/benchmarks, on sys.path under pytest

screen = load_suite_module("screen_table")


def _run(results, tag, task, method, seed, accuracy, n_test=100):
    path = os.path.join(results, tag, task, "runs", method, "resnet18", f"seed{seed}", "eval")
    os.makedirs(path)
    right = round(accuracy * n_test)
    final = {"accuracy": accuracy, "confusion_matrix": [[right, 0], [n_test - right, 0]]}
    json.dump({"split": "test", "final": final}, open(os.path.join(path, "test_metrics.json"), "w"))


def test_each_variant_reads_its_own_tag_method_and_seed_and_averages_the_tasks_it_has(tmp_path):
    """Catches a row reading another tag, method or seed, and a mean that counts a missing task as 0."""
    r = str(tmp_path)
    _run(r, "a", "aal_lobes_rgb25d", "rd", 0, 0.4)
    _run(r, "a", "brodmann_axial32", "rd", 0, 0.2)
    _run(r, "a", "brodmann_axial32", "rd", 1, 0.9)  # another seed
    _run(r, "a", "brodmann_axial32", "student", 0, 0.8)  # another method
    _run(r, "b", "aal_lobes_rgb25d", "rd", 0, 0.7)  # another tag
    table = screen.screen_table(r, ["RD, τ 1:a:rd", "alone:a:student"], seeds=[0]).splitlines()
    assert table[0].startswith("| variant | `aal_lobes_rgb25d` |") and len(table) == 4
    assert table[2] == "| RD, τ 1 | 0.400 | — | 0.200 | — | — | 0.300 (2) |"
    assert table[3] == "| alone | — | — | 0.800 | — | — | 0.800 (1) |"
    assert "0.900" in screen.screen_table(r, ["x:a:rd"], seeds=[1])


def test_a_variant_that_is_not_label_tag_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label:tag:method"):
        screen.screen_table(str(tmp_path), ["rd_only"])


def _two_tasks_three_seeds(r):
    tasks = ("aal_lobes_rgb25d", "brodmann_axial32")
    for seed, (x, y) in enumerate([(0.5, 0.3), (0.6, 0.2), (0.4, 0.4)]):
        _run(r, "alone", tasks[0], "student", seed, x)
        _run(r, "alone", tasks[1], "student", seed, y)
        _run(r, "u", tasks[0], "rd", seed, x + 0.1 * (seed + 1))  # +0.1, +0.2, +0.3 on one task, 0 on the other
        _run(r, "u", tasks[1], "rd", seed, y)
    return tasks


def test_over_seeds_cells_are_mean_sd_and_the_difference_is_paired_seed_by_seed(tmp_path):
    """Catches sd taken over tasks instead of seeds, an unpaired difference (whose interval would include 0 here:
    the students' seeds spread by 0.2 while the paired gains are 0.05, 0.10, 0.15), and a wrong t quantile."""
    r = str(tmp_path)
    tasks = _two_tasks_three_seeds(r)
    table = screen.screen_table(r, ["alone:alone:student", "RD+U:u:rd"], seeds=[0, 1, 2], tasks=tasks,
                                baseline="alone").splitlines()
    assert table[2] == "| alone | 0.500 ± 0.100 | 0.300 ± 0.100 | 0.400 ± 0.000 | — |"
    # per-seed means over the tasks: RD+U 0.45, 0.50, 0.55; alone 0.40, 0.40, 0.40; differences 0.05, 0.10, 0.15
    # (sd 0.05): 0.10 ± t(0.975, 2) * 0.05 / sqrt(3) = 0.10 ± 0.124
    assert table[3] == "| RD+U | 0.700 ± 0.100 | 0.300 ± 0.100 | 0.500 ± 0.050 | +0.100 [-0.024, +0.224] |"


def test_a_missing_seed_is_counted_and_leaves_no_paired_interval(tmp_path):
    r = str(tmp_path)
    tasks = _two_tasks_three_seeds(r)
    _run(r, "part", tasks[0], "rd", 0, 0.9)
    _run(r, "part", tasks[0], "rd", 1, 0.7)
    table = screen.screen_table(r, ["alone:alone:student", "part:part:rd"], seeds=[0, 1, 2], tasks=tasks,
                                baseline="alone").splitlines()
    assert table[3] == "| part | 0.800 ± 0.141 (2 seeds) | — | 0.800 (1) | n/a |"
    with pytest.raises(ValueError, match="--baseline 'nope'"):
        screen.screen_table(r, ["alone:alone:student"], seeds=[0], tasks=tasks, baseline="nope")


def test_the_plot_is_written_from_the_runs(tmp_path):
    r = str(tmp_path)
    tasks = _two_tasks_three_seeds(r)
    screen.plot(r, ["alone:alone:student", "RD+U:u:rd"], [0, 1, 2], str(tmp_path / "a.png"), tasks=tasks)
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_the_command_line_restricts_the_table_to_the_tasks_named(tmp_path, capsys):
    """Catches --tasks ignored: with all five columns the partly-run variant has no paired interval (n/a)."""
    r = str(tmp_path)
    tasks = _two_tasks_three_seeds(r)
    variants = ["alone:alone:student", "RD+U:u:rd"]
    screen.main(["--results", r, "--seeds", "0", "1", "2", "--baseline", "alone", *variants])
    assert capsys.readouterr().out.splitlines()[3].endswith(" n/a |")
    screen.main(["--results", r, "--seeds", "0", "1", "2", "--baseline", "alone", *variants, "--tasks", *tasks,
                 "--plot", str(tmp_path / "b.png")])
    lines = capsys.readouterr().out.splitlines()
    header = "| variant | `aal_lobes_rgb25d` | `brodmann_axial32` | mean (tasks) | minus alone (95% t, 3 seeds) |"
    assert lines[0] == header
    assert lines[3] == "| RD+U | 0.700 ± 0.100 | 0.300 ± 0.100 | 0.500 ± 0.050 | +0.100 [-0.024, +0.224] |"
    assert (tmp_path / "b.png").stat().st_size > 1000
