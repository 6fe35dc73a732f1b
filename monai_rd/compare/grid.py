"""Run a grid of (method, student, seed) trainings of one bundle through ``python -m monai.bundle run``."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai_rd.compare.settings import check_recorded_settings, record_settings, run_settings
from monai_rd.errors import OptionError

__all__ = ["GridRun", "bundle_default", "parse_overrides", "plan_grid", "run_grid"]

TRAIN_DONE = "train.done"
# options each run gets from the grid, which --set may not change
GRID_OPTIONS = ("method", "student", "seed", "ckpt_dir", "output_dir", "bundle_root", "resume", "overwrite", "distill")


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One training of the grid and where it lives: ``<out>/runs/<method>/<student>/seed<k>/``."""

    method: str
    student: str
    seed: int
    folder: str

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.folder, "models")

    @property
    def output_dir(self) -> str:
        return os.path.join(self.folder, "eval")

    @property
    def test_metrics(self) -> str:
        return os.path.join(self.output_dir, "test_metrics.json")

    @property
    def label(self) -> str:
        return f"{self.method} / {self.student} / seed {self.seed}"


def bundle_default(bundle: str, key: str) -> Any:
    """A plain default of the bundle's generated ``configs/train.json`` (e.g. its ``student``)."""
    with open(os.path.join(bundle, "configs", "train.json")) as f:
        return json.load(f).get(key)


def plan_grid(out: str, methods: Sequence[str], students: Sequence[str], seeds: Sequence[int]) -> list[GridRun]:
    """The grid's runs, method-major (all seeds of a method and student together, so a table fills row by row)."""
    return [
        GridRun(m, s, k, os.path.join(out, "runs", m, s.replace(":", "_").replace("/", "_"), f"seed{k}"))
        for m in methods
        for s in students
        for k in seeds
    ]


def _checkpoint_epoch(run: GridRun) -> int:
    files = glob.glob(os.path.join(run.ckpt_dir, "checkpoint_epoch=*.pt"))
    return max((int(re.findall(r"checkpoint_epoch=(\d+)\.pt$", p)[0]) for p in files), default=0)


def _last_line(log: str) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("monai_rd:")]  # a user-fixable error, as the excepthook prints it
    return (errors or lines or ["(empty log)"])[-1]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _bundle_cmd(python: str, config: str, bundle: str, run: GridRun, overrides: Mapping[str, str]) -> list[str]:
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", bundle]
    cmd += ["--method", run.method, "--student", run.student, "--seed", str(run.seed)]
    cmd += ["--ckpt_dir", run.ckpt_dir, "--output_dir", run.output_dir]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    return cmd


def run_grid(
    bundle: str,
    runs: Sequence[GridRun],
    overrides: Mapping[str, str] | None = None,
    keep_checkpoints: bool = False,
    python: str = sys.executable,
    log: Callable[[str], None] = print,
) -> tuple[list[GridRun], list[tuple[GridRun, str]]]:
    """Train and test every run that has no test metrics yet; resume the ones a previous invocation left.

    First, every run folder that already holds a run must have been made with this call's settings (its
    ``settings.json``, :mod:`monai_rd.compare.settings`): otherwise nothing runs. For each run:
    ``test_metrics.json`` present -> skipped. Otherwise training, unless ``train.done`` says it
    finished: with ``--resume true`` from its newest ``checkpoint_epoch=N.pt``, else afresh (``--overwrite true``
    when a killed run left files without a checkpoint; they are moved aside, never deleted); then the bundle's
    ``evaluate.json`` on the test split. Each command's output goes to ``train.log``/``test.log`` in the run's
    folder. A failed run is reported and the grid goes on. The final checkpoints (100+ MB each) are removed
    once the test metrics exist, unless ``keep_checkpoints``; ``models/model.pt`` is kept.

    Args:
        bundle: the bundle folder (``bundles/<name>``).
        runs: from :func:`plan_grid`.
        overrides: ``--key value`` pairs passed to both training and evaluation.
        keep_checkpoints: keep ``checkpoint_epoch=N.pt`` of finished runs.
        python: the interpreter to run ``-m monai.bundle`` with.
        log: where progress lines go.

    Returns:
        ``(finished runs, [(failed run, its last log line)])``.

    Raises:
        OutputFolderError: a run folder holds a run made with other settings, or unknown ones.
    """
    overrides = dict(overrides or {})
    configs = os.path.join(bundle, "configs")
    train_cfg = os.path.join(configs, "train.json")
    eval_cfg = f"['{train_cfg}','{os.path.join(configs, 'evaluate.json')}']"
    settings = {r: run_settings(bundle, r, overrides) for r in runs}
    if runs:
        check_recorded_settings(os.path.commonpath([r.folder for r in runs]), runs, settings)
    todo = [r for r in runs if not os.path.isfile(r.test_metrics)]
    log(f"grid: {len(runs)} runs, {len(runs) - len(todo)} already tested, {len(todo)} to run")
    finished = [r for r in runs if r not in todo]
    failed: list[tuple[GridRun, str]] = []
    spent: dict[str, list[float]] = {}  # seconds per finished run, by method: methods differ in cost
    for i, run in enumerate(todo, 1):
        record_settings(run, settings[run])
        start = time.time()
        step = f"[{i}/{len(todo)}] {run.label}"
        done_marker = os.path.join(run.folder, TRAIN_DONE)
        ok = True
        if not os.path.isfile(done_marker):
            cmd = _bundle_cmd(python, train_cfg, bundle, run, overrides)
            epoch = _checkpoint_epoch(run)
            if epoch:
                cmd += ["--resume", "true"]
                log(f"{step}: resuming training after epoch {epoch}")
            else:
                if any(os.path.exists(d) for d in (run.ckpt_dir, run.output_dir)):
                    cmd += ["--overwrite", "true"]  # a run killed before its first checkpoint
                log(f"{step}: training")
            ok = _call(cmd, os.path.join(run.folder, "train.log"))
            if ok:
                open(done_marker, "w").close()
        if ok:
            log(f"{step}: testing")
            ok = _call(_bundle_cmd(python, eval_cfg, bundle, run, overrides), os.path.join(run.folder, "test.log"))
        if not ok:
            which = "test.log" if os.path.isfile(done_marker) else "train.log"
            reason = _last_line(os.path.join(run.folder, which))
            failed.append((run, reason))
            log(f"{step}: FAILED ({os.path.join(run.folder, which)}): {reason}")
            continue
        if not keep_checkpoints:
            for ckpt in glob.glob(os.path.join(run.ckpt_dir, "checkpoint_epoch=*.pt")):
                os.remove(ckpt)
        finished.append(run)
        took = time.time() - start
        spent.setdefault(run.method, []).append(took)
        with open(run.test_metrics) as f:
            final = json.load(f).get("final", {})
        left = todo[i:]
        log(
            f"{step}: done in {_duration(took)}, test accuracy {_fmt(final.get('accuracy'))}, "
            f"AUC {_fmt(final.get('auc'))}; {_eta(left, spent)}"
        )
    return finished, failed


def _eta(left: Sequence[GridRun], spent: Mapping[str, Sequence[float]]) -> str:
    """Time left: each remaining run costs its method's mean so far, or the mean of all runs so far."""
    if not left:
        return "grid complete"
    every = [t for times in spent.values() for t in times]
    mean = {m: sum(times) / len(times) for m, times in spent.items()}
    guess = sum(mean.get(r.method, sum(every) / len(every)) for r in left)
    return f"ETA {_duration(guess)} for {len(left)} more"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _call(cmd: list[str], log_file: str) -> bool:
    with open(log_file, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``["epochs=1", "batch_size=5"]`` -> ``{"epochs": "1", "batch_size": "5"}``.

    Raises:
        OptionError: a pair without ``=``, or one that sets what the grid itself sets.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise OptionError(f"--set takes key=value pairs, got {pair!r}.")
        if key in GRID_OPTIONS:
            raise OptionError(f"--set {key}=... is set by the grid itself; use --methods/--students/--seeds/--out.")
        out[key] = value
    return out
