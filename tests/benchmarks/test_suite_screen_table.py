"""benchmarks/suite/screen_table.py: one seed's test accuracy per task for several variants."""

import json
import os

import pytest
from suite_modules import load_suite_module  # tests/benchmarks, on sys.path under pytest

screen = load_suite_module("screen_table")


def _run(results, tag, task, method, seed, accuracy):
    path = os.path.join(results, tag, task, "runs", method, "resnet18", f"seed{seed}", "eval")
    os.makedirs(path)
    json.dump({"split": "test", "final": {"accuracy": accuracy}}, open(os.path.join(path, "test_metrics.json"), "w"))


def test_each_variant_reads_its_own_tag_method_and_seed_and_averages_the_tasks_it_has(tmp_path):
    """Catches a row reading another tag, method or seed, and a mean that counts a missing task as 0."""
    r = str(tmp_path)
    _run(r, "a", "aal_lobes_rgb25d", "rd", 0, 0.4)
    _run(r, "a", "brodmann_axial32", "rd", 0, 0.2)
    _run(r, "a", "brodmann_axial32", "rd", 1, 0.9)  # another seed
    _run(r, "a", "brodmann_axial32", "student", 0, 0.8)  # another method
    _run(r, "b", "aal_lobes_rgb25d", "rd", 0, 0.7)  # another tag
    table = screen.screen_table(r, ["RD, τ 1:a:rd", "alone:a:student"], seed=0).splitlines()
    assert table[0].startswith("| variant | `aal_lobes_rgb25d` |") and len(table) == 4
    assert table[2] == "| RD, τ 1 | 0.400 | — | 0.200 | — | — | 0.300 (2) |"
    assert table[3] == "| alone | — | — | 0.800 | — | — | 0.800 (1) |"
    assert "0.900" in screen.screen_table(r, ["x:a:rd"], seed=1)


def test_a_variant_that_is_not_label_tag_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label:tag:method"):
        screen.screen_table(str(tmp_path), ["rd_only"])
