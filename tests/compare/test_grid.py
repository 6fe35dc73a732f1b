"""The grid runner's bookkeeping (skip, resume, overwrite, failures, progress) with a stand-in for monai.bundle."""

import json
import os
import stat
import sys

import pytest

from monai_rd.compare.grid import parse_overrides, plan_grid, run_grid
from monai_rd.compare.settings import record_settings, run_settings
from monai_rd.errors import OptionError, OutputFolderError

FAKE = """#!{python}
import json, os, sys
args = sys.argv[sys.argv.index("run") + 1:]
opts = dict(zip(args[::2], args[1::2]))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if opts["--method"] == os.environ.get("FAKE_FAIL"):
    print("some traceback line")
    print("monai_rd: OptionError: boom")
    sys.exit(1)
ckpt, out = opts["--ckpt_dir"], opts["--output_dir"]
os.makedirs(ckpt, exist_ok=True)
os.makedirs(out, exist_ok=True)
if opts["--config_file"].startswith("["):
    metrics = {{"final": {{"accuracy": 0.5, "auc": 0.75, "confusion_matrix": [[1, 1], [0, 2]]}}}}
    json.dump(metrics, open(os.path.join(out, "test_metrics.json"), "w"))
else:
    open(os.path.join(ckpt, "model.pt"), "w").close()
    open(os.path.join(ckpt, "checkpoint_epoch=2.pt"), "w").close()
"""


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_python"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)

    def calls():
        path = tmp_path / "calls.jsonl"
        return [json.loads(line) for line in open(path)] if path.exists() else []

    return str(script), str(bundle), calls


def _opts(args):
    return dict(zip(args[::2], args[1::2]))


def test_fresh_grid_trains_then_tests_each_run_in_its_own_folder(tmp_path, fake):
    python, bundle, calls = fake
    runs = plan_grid(str(tmp_path / "out"), ["student", "kd"], ["resnet18"], [0, 1])
    lines = []
    finished, failed = run_grid(bundle, runs, {"epochs": "1"}, python=python, log=lines.append)
    assert failed == [] and finished == runs
    made = [_opts(a) for a in calls()]
    assert len(made) == 8
    for i, run in enumerate(runs):
        train, test = made[2 * i], made[2 * i + 1]
        assert train["--config_file"].endswith("train.json") and test["--config_file"].startswith("[")
        for opts in (train, test):
            assert (opts["--method"], opts["--student"], opts["--seed"]) == (run.method, run.student, str(run.seed))
            assert opts["--ckpt_dir"] == run.ckpt_dir and opts["--epochs"] == "1"
            assert "--resume" not in opts and "--overwrite" not in opts
        assert run.folder == str(tmp_path / "out" / "runs" / run.method / "resnet18" / f"seed{run.seed}")
        assert os.listdir(run.ckpt_dir) == ["model.pt"]  # the final checkpoint is removed once tested
    assert lines[0] == "grid: 4 runs, 0 already tested, 4 to run"
    assert "[1/4] student / resnet18 / seed 0: done in" in lines[3] and "ETA" in lines[3] and "for 3 more" in lines[3]
    assert "test accuracy 0.500, AUC 0.750" in lines[3]
    assert lines[-1].endswith("grid complete")

    lines.clear()
    assert run_grid(bundle, runs, {"epochs": "1"}, python=python, log=lines.append)[0] == runs
    assert len(calls()) == 8 and lines == ["grid: 4 runs, 4 already tested, 0 to run"]  # nothing run again
    # other settings are not tabulated as these runs: refused before anything runs
    other = r"(?s)4 run\(s\) made with other settings.*epochs: recorded '1', now '2'"
    with pytest.raises(OutputFolderError, match=other):
        run_grid(bundle, runs, {"epochs": "2"}, python=python, log=lines.append)
    assert len(calls()) == 8


def test_stopped_runs_resume_from_their_checkpoint_or_restart_or_only_test(tmp_path, fake):
    python, bundle, calls = fake
    checkpointed, killed_early, trained = plan_grid(str(tmp_path / "out"), ["rd"], ["resnet18"], [0, 1, 2])
    os.makedirs(checkpointed.ckpt_dir)
    open(os.path.join(checkpointed.ckpt_dir, "checkpoint_epoch=3.pt"), "w").close()
    os.makedirs(killed_early.output_dir)  # killed in epoch 1: metrics folder, no checkpoint
    os.makedirs(trained.ckpt_dir)
    open(os.path.join(trained.folder, "train.done"), "w").close()
    for run in (checkpointed, killed_early, trained):  # left by an earlier call with the same settings
        record_settings(run, run_settings(bundle, run, {}))
    lines = []
    run_grid(bundle, [checkpointed, killed_early, trained], python=python, log=lines.append)
    made = [_opts(a) for a in calls()]
    assert made[0]["--resume"] == "true" and "--overwrite" not in made[0] and made[0]["--seed"] == "0"
    assert "resuming training after epoch 3" in lines[1]
    assert made[2]["--overwrite"] == "true" and "--resume" not in made[2] and made[2]["--seed"] == "1"
    assert [m["--seed"] for m in made[4:]] == ["2"] and made[4]["--config_file"].startswith("[")  # tested only


def test_a_failing_run_is_reported_with_its_error_and_the_grid_goes_on(tmp_path, fake, monkeypatch):
    python, bundle, calls = fake
    monkeypatch.setenv("FAKE_FAIL", "kd")
    runs = plan_grid(str(tmp_path / "out"), ["kd", "student"], ["resnet18"], [0])
    lines = []
    finished, failed = run_grid(bundle, runs, python=python, log=lines.append)
    assert finished == runs[1:]
    assert [(r.method, reason) for r, reason in failed] == [("kd", "monai_rd: OptionError: boom")]
    assert any("FAILED" in ln and "train.log" in ln for ln in lines)
    assert not os.path.exists(os.path.join(runs[0].folder, "train.done"))  # retried by the next invocation


def test_overrides_are_key_value_pairs_and_cannot_set_the_grid():
    parsed = parse_overrides(["epochs=1", "--batch_size=5", "lr=1e-3"])
    assert parsed == {"epochs": "1", "batch_size": "5", "lr": "1e-3"}
    with pytest.raises(OptionError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(OptionError, match="set by the grid itself"):
        parse_overrides(["method=kd"])


def test_eta_charges_each_remaining_run_its_methods_mean_time():
    from monai_rd.compare.grid import _eta

    left = plan_grid("out", ["rd", "kd"], ["resnet18"], [0])
    # rd: its own mean 300 s; kd, not run yet: the mean of every run so far, (60 + 300 + 300) / 3 = 220 s
    assert _eta(left, {"probe": [60.0], "rd": [300.0, 300.0]}) == "ETA 8m40s for 2 more"
    assert _eta([], {"rd": [1.0]}) == "grid complete"
