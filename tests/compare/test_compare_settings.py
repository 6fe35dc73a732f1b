"""`python -m monai_rd.compare` as typed: a rerun with other settings is refused, never tabulated as the new ones;
a mistyped --set key is refused with the closest known ones."""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")


def _compare(tmp_path, *sets):
    cmd = [sys.executable, "-m", "monai_rd.compare", "--bundle", BUNDLE, "--methods", "student", "--seeds", "0",
           "--out", str(tmp_path / "compare"), "--no_cost", "--set", *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_not_tabulated_as_them(tmp_path):
    """Catches "1 already tested, 0 to run" and the old results tabulated under the new --set values."""
    full = json.load(open(os.path.join(BUNDLE, "configs", "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 2, "validation": 1, "test": 1}.items():
        sub[split] = [it for c in range(5) for it in [i for i in full[split] if i["label"] == c][:k]]
    (tmp_path / "datalist.json").write_text(json.dumps(sub))
    sets = ["epochs=1", "batch_size=5", "image_size=32", f"datalist_json={tmp_path / 'datalist.json'}"]
    first = _compare(tmp_path, *sets)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    results = open(tmp_path / "compare" / "results.csv").read()

    again = _compare(tmp_path, *sets)  # the same settings: nothing to run, the same table
    assert again.returncode == 0 and "1 already tested, 0 to run" in again.stdout
    other = _compare(tmp_path, *[s.replace("epochs=1", "epochs=2") for s in sets])
    assert other.returncode == 2
    assert "monai_rd: OutputFolderError:" in other.stderr and "epochs: recorded '1', now '2'" in other.stderr
    assert "Use another --out" in other.stderr and "to run" not in other.stdout
    sub["test"] = sub["test"][1:]  # the same datalist path, other content
    (tmp_path / "datalist.json").write_text(json.dumps(sub))
    changed = _compare(tmp_path, *sets)
    assert changed.returncode == 2 and "files.datalist_json: recorded" in changed.stderr
    assert open(tmp_path / "compare" / "results.csv").read() == results
    assert [r["method"] for r in csv.DictReader(open(tmp_path / "compare" / "results.csv"))] == ["student"]


def test_a_mistyped_set_key_is_refused_with_the_closest_option(tmp_path):
    """Catches `--set epoch=2` passed on to every run, where the bundle ignores it (it trains its default epochs)."""
    done = _compare(tmp_path, "epoch=2")
    assert done.returncode == 2 and "--epoch: did you mean --epochs?" in done.stderr
    assert not os.path.exists(tmp_path / "compare" / "runs")
