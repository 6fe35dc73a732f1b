"""Run methods x seeds on every task of the suite (``make_tasks.py``) and summarise them in one table.

Each task is trained and tested with the own-data bundle ``bundles/rd_classify`` through ``python -m
monai_rd.compare`` (same data path, student, schedule, checkpoint selection and seeds for every method), pointed at
the task's ``datalist.json``, with the demo's recipe settings (15 epochs, lr 1e-3, weight decay 1e-4, no
loader workers) and the task's own image size and channels. Every ``--set key=value`` goes to every run after
those, so other defaults can be tried without editing anything::

    python benchmarks/suite/make_tasks.py --out benchmarks/suite/tasks
    python benchmarks/suite/run_suite.py --tasks_dir benchmarks/suite/tasks --tag defaults
    python benchmarks/suite/run_suite.py --tasks_dir benchmarks/suite/tasks --tag alpha2 --methods student rd \\
        --set alpha_start=2.0            # reuses nothing from "defaults": each tag has its own runs

Runs live in ``<results>/<tag>/<task>/runs/<method>/<student>/seed<k>/`` (``monai_rd.compare``'s layout); running
the same command again skips finished runs and resumes stopped ones. ``<results>/<tag>/summary.md`` and
``summary.csv`` give, per task and method, the test accuracy (mean ± sd over seeds), a Wilson 95% interval of an
accuracy at that mean on the task's test images, the fraction of the student -> probe gap the method closes
(``(acc - acc_student) / (acc_probe - acc_student)``, from the means), and for methods with Phi the teacher
branch's validation accuracy ``h(Phi(T(x)))`` at the last epoch beside the student's; then the same averaged over
tasks. Everything in them is read from the runs' ``test_metrics.json`` and ``val_metrics.json``, as are the two
figures beside them: ``curves.png`` (validation accuracy per epoch of each method, the teacher branch dashed, the
probe's as a line) and ``accuracy.png`` (test accuracy per task with its Wilson interval).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, REPO)

from monai_rd.compare import cli as compare_cli  # noqa: E402
from monai_rd.compare.grid import parse_overrides, plan_grid  # noqa: E402
from monai_rd.methods import METHODS  # noqa: E402

DEFAULT_BUNDLE = os.path.join(REPO, "bundles", "rd_classify")
DEFAULT_RESULTS = os.path.join(REPO, "benchmarks", "results", "suite")
# the demo's own task (bundles/rd_demo), run the same way when --include_demo is given
DEMO_TASK = {
    "datalist_json": os.path.join(REPO, "bundles", "rd_demo", "configs", "datalist.json"),
    "dataset_dir": os.path.join(REPO, "bundles", "rd_demo", "data"),
    "image_size": 64,
    "in_channels": 1,
    "summary": "the demo: AAL lobes, axial 64 px, 5 classes (bundles/rd_demo)",
}
# the demo bundle's settings (bundles/rd_demo/configs/overrides.json), for tasks of the demo's size
DEMO_SETTINGS = {"epochs": "15", "num_workers": "0", "lr": "0.001", "weight_decay": "0.0001"}
CSV_FIELDS = (
    "task", "method", "seeds", "n_test", "accuracy_mean", "accuracy_sd", "wilson95_low", "wilson95_high",
    "auc_mean", "gap_closed", "teacher_branch_val_accuracy", "student_val_accuracy",
)


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials (95% for the default ``z``).

    Raises:
        ValueError: ``n < 1`` or ``p`` outside [0, 1].
    """
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"a Wilson interval needs n >= 1 and 0 <= p <= 1; got n={n}, p={p}.")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def gap_closed(acc: float | None, student: float | None, probe: float | None) -> float | None:
    """``(acc - student) / (probe - student)``: 0 = no better than the student alone, 1 = as good as the probe.

    None when a value is missing or the probe is not above the student (no gap to close).
    """
    if acc is None or student is None or probe is None or probe - student <= 0:
        return None
    return (acc - student) / (probe - student)


def _json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def task_rows(
    task: str, out: str, methods: Sequence[str], student: str, seeds: Sequence[int], n_test: int
) -> list[dict]:
    """One summary row per method of a task, from its runs' metrics files (runs without test metrics are left out).

    Args:
        task: the task name.
        out: the task's ``monai_rd.compare`` output folder.
        methods: methods in table order.
        student: the student architecture.
        seeds: the seeds.
        n_test: test images of the task (for the Wilson interval).

    Returns:
        Dicts with the :data:`CSV_FIELDS` (None where undefined).
    """
    rows = []
    for method in methods:
        accs, aucs, tb_acc, st_acc = [], [], [], []
        for run in plan_grid(out, [method], [student], seeds):
            test = _json(run.test_metrics)
            if test is None:
                continue
            final = test["final"]
            accs.append(float(final["accuracy"]))
            if final.get("auc") is not None:
                aucs.append(float(final["auc"]))
            val = _json(os.path.join(run.output_dir, "val_metrics.json"))
            last = (val or {}).get("history", [{}])[-1] if val and val.get("history") else {}
            if last.get("teacher_branch_accuracy") is not None:
                tb_acc.append(float(last["teacher_branch_accuracy"]))
            if last.get("accuracy") is not None:
                st_acc.append(float(last["accuracy"]))
        mean = _mean(accs)
        lo, hi = wilson_interval(mean, n_test) if mean is not None else (None, None)
        rows.append({
            "task": task, "method": method, "seeds": len(accs), "n_test": n_test,
            "accuracy_mean": mean, "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else None,
            "wilson95_low": lo, "wilson95_high": hi, "auc_mean": _mean(aucs), "gap_closed": None,
            "teacher_branch_val_accuracy": _mean(tb_acc), "student_val_accuracy": _mean(st_acc),
        })
    by = {r["method"]: r["accuracy_mean"] for r in rows}
    for r in rows:
        if r["method"] not in ("student", "probe"):
            r["gap_closed"] = gap_closed(r["accuracy_mean"], by.get("student"), by.get("probe"))
    return rows


def average_rows(rows: Sequence[Mapping], methods: Sequence[str]) -> list[dict]:
    """Per method, the mean over tasks of the task means (tasks where the method has results)."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["accuracy_mean"] is not None]
        gaps = [r["gap_closed"] for r in mine if r["gap_closed"] is not None]
        tb = [r["teacher_branch_val_accuracy"] for r in mine if r["teacher_branch_val_accuracy"] is not None]
        out.append({
            "task": "mean over tasks", "method": method, "tasks": len(mine),
            "accuracy_mean": _mean([r["accuracy_mean"] for r in mine]),
            "gap_closed_mean": _mean(gaps),
            "teacher_branch_val_accuracy": _mean(tb),
        })
    return out


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_summary(
    folder: str, rows: Sequence[Mapping], methods: Sequence[str], settings: Mapping[str, str],
    summaries: Mapping[str, str], command: str,
) -> None:
    """``summary.csv`` (one row per task and method) and ``summary.md`` in ``folder``."""
    with open(os.path.join(folder, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in CSV_FIELDS})
    avg = average_rows(rows, methods)
    lines = [
        "# Task suite: methods compared", "",
        f"Command: `{command}`", "",
        "Settings given to every run: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), "",
        "Test accuracy, mean ± sd over seeds; Wilson 95% interval of one accuracy at that mean on the task's test "
        "images; gap closed = (acc − student) / (probe − student), from the means; teacher branch = validation "
        "accuracy of h(Φ(T(x))) at the last epoch (methods with Φ), beside the student's.", "",
        "| task | method | seeds | test accuracy | Wilson 95% | AUC | gap closed | teacher branch (val) "
        "| student (val) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = "n/a" if r["accuracy_mean"] is None else (
            f"{r['accuracy_mean']:.3f}" + (f" ± {r['accuracy_sd']:.3f}" if r["accuracy_sd"] is not None else ""))
        wil = "n/a" if r["wilson95_low"] is None else f"{r['wilson95_low']:.3f}–{r['wilson95_high']:.3f}"
        lines.append(
            f"| {r['task']} | {r['method']} | {r['seeds']} | {acc} | {wil} | {_fmt(r['auc_mean'])} | "
            f"{_fmt(r['gap_closed'], 2)} | {_fmt(r['teacher_branch_val_accuracy'])} | "
            f"{_fmt(r['student_val_accuracy'])} |"
        )
    lines += ["", "## Mean over tasks", "", "| method | tasks | test accuracy | gap closed | teacher branch (val) |",
              "|---|---|---|---|---|"]
    for a in avg:
        lines.append(f"| {a['method']} | {a['tasks']} | {_fmt(a['accuracy_mean'])} | {_fmt(a['gap_closed_mean'], 2)} | "
                     f"{_fmt(a['teacher_branch_val_accuracy'])} |")
    acc = {a["method"]: a["accuracy_mean"] for a in avg}
    if all(acc.get(m) is not None for m in ("rd", "kd", "student")):
        lines += ["", f"RD ≥ KD ≥ student on average: {acc['rd'] >= acc['kd'] >= acc['student']} "
                  f"(rd {acc['rd']:.3f}, kd {acc['kd']:.3f}, student {acc['student']:.3f})."]
    gap = {a["method"]: a["gap_closed_mean"] for a in avg}
    if gap.get("rd") is not None:
        lines += ["", f"RD closes on average {gap['rd']:.2f} of the student → probe gap (target: 0.5)."]
    lines += ["", "Tasks:", ""] + [f"- `{t}`: {s}" for t, s in summaries.items()]
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def epoch_curves(out: str, method: str, student: str, seeds: Sequence[int]) -> dict[str, list[float]]:
    """Validation accuracy per epoch of a task's method, the mean over the seeds whose runs have it.

    Args:
        out: the task's ``monai_rd.compare`` output folder.
        method: the method.
        student: the student architecture.
        seeds: the seeds.

    Returns:
        ``{"student": [...], "teacher_branch": [...]}`` (the teacher branch h(Φ(T(x))) only for methods with Φ),
        one value per epoch, averaged over the finished runs (those with test metrics, as in the summary table) that
        reached that epoch; empty lists when there are none.
    """
    per_seed: dict[str, list[list[float]]] = {"student": [], "teacher_branch": []}
    for run in plan_grid(out, [method], [student], seeds):
        if not os.path.isfile(run.test_metrics):  # an unfinished run's partial curve would not match the table
            continue
        val = _json(os.path.join(run.output_dir, "val_metrics.json"))
        history = sorted((val or {}).get("history") or [], key=lambda h: h["epoch"])
        for key, name in (("student", "accuracy"), ("teacher_branch", "teacher_branch_accuracy")):
            values = [float(h[name]) for h in history if h.get(name) is not None]
            if values:
                per_seed[key].append(values)
    curves = {}
    for key, runs in per_seed.items():
        epochs = max((len(r) for r in runs), default=0)
        curves[key] = [_mean([r[e] for r in runs if len(r) > e]) for e in range(epochs)]
    return curves


def write_plots(
    folder: str, outs: Mapping[str, str], rows: Sequence[Mapping], methods: Sequence[str], student: str,
    seeds: Sequence[int],
) -> list[str]:
    """``curves.png``: per task, each method's validation accuracy per epoch (mean over seeds) with the teacher
    branch h(Φ(T(x))) dashed and the probe's validation accuracy as a line: if the teacher branch stays below the
    probe, the student cannot inherit the probe's margin. ``accuracy.png``: per task, each method's test accuracy
    with its Wilson 95% interval. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(outs)
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for i, method in enumerate(methods):
            curves = epoch_curves(outs[task], method, student, seeds)
            if method == "probe":  # a probe has no student curve worth drawing: its last validation score
                if curves["student"]:
                    ax.axhline(curves["student"][-1], color="gray", ls=":", label="probe (val)")
                continue
            color = f"C{i}"
            if curves["student"]:
                ax.plot(range(1, len(curves["student"]) + 1), curves["student"], color=color, label=method)
            if curves["teacher_branch"]:
                ax.plot(range(1, len(curves["teacher_branch"]) + 1), curves["teacher_branch"], color=color, ls="--",
                        label=f"{method}: h(Φ(T(x)))")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    written = [os.path.join(folder, "curves.png")]
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) * len(methods) / 2), 4))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        mine = {r["task"]: r for r in rows if r["method"] == method and r["accuracy_mean"] is not None}
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, t in enumerate(tasks) if t in mine]
        means = [mine[t]["accuracy_mean"] for t in tasks if t in mine]
        err = [[mine[t]["accuracy_mean"] - mine[t]["wilson95_low"] for t in tasks if t in mine],
               [mine[t]["wilson95_high"] - mine[t]["accuracy_mean"] for t in tasks if t in mine]]
        ax.bar(xs, means, width=width * 0.9, yerr=err, capsize=2, label=method, alpha=0.85)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (mean over seeds, Wilson 95%)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(methods))
    fig.tight_layout()
    written.append(os.path.join(folder, "accuracy.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def find_tasks(tasks_dir: str, names: Sequence[str] | None, include_demo: bool = False) -> dict[str, dict]:
    """``{task: its datalist.json's content + datalist_json and dataset_dir}`` for the task folders in ``tasks_dir``
    (or only ``names``), plus the demo's task as ``rd_demo`` when ``include_demo``.

    Raises:
        SystemExit: no task found, or a named task has no ``datalist.json``.
    """
    listed = os.listdir(tasks_dir) if os.path.isdir(tasks_dir) else []
    found = sorted(d for d in listed if os.path.isfile(os.path.join(tasks_dir, d, "datalist.json")))
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"no {missing} with a datalist.json in {tasks_dir}; build them with make_tasks.py.")
        found = list(names)
    if not found and not include_demo:
        raise SystemExit(f"no task folder with a datalist.json in {tasks_dir}; build them with make_tasks.py first.")
    out = {}
    for name in found:
        folder = os.path.abspath(os.path.join(tasks_dir, name))
        with open(os.path.join(folder, "datalist.json")) as f:
            out[name] = {**json.load(f), "datalist_json": os.path.join(folder, "datalist.json"), "dataset_dir": folder}
    if include_demo:
        with open(DEMO_TASK["datalist_json"]) as f:
            out["rd_demo"] = {**json.load(f), **DEMO_TASK}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks_dir", default=os.path.join(REPO, "benchmarks", "suite", "tasks"))
    p.add_argument("--tasks", nargs="+", default=None, help="task folders to run (default: all in --tasks_dir)")
    p.add_argument("--tag", required=True, help="name of this configuration: results go to <results>/<tag>/")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"default: {DEFAULT_RESULTS}")
    p.add_argument("--methods", nargs="+", default=["probe", "student", "kd", "rd"], choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="the own-data bundle the tasks are run with")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle options for every run")
    p.add_argument("--include_demo", action="store_true", help="also run the demo's task (bundles/rd_demo's data)")
    p.add_argument("--summary_only", action="store_true", help="rewrite the summary from the runs there are")
    a = p.parse_args(argv)
    tasks = find_tasks(a.tasks_dir, a.tasks, a.include_demo)
    user = parse_overrides(a.set)
    folder = os.path.join(a.results, a.tag)
    os.makedirs(folder, exist_ok=True)
    # the bundle's subprocesses import monai_rd from this checkout even when it is not installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    status, rows, outs = 0, [], {}
    for name, datalist in tasks.items():
        out = outs[name] = os.path.join(folder, name)
        settings = {
            **DEMO_SETTINGS,
            "image_size": str(datalist.get("image_size", 64)),
            "in_channels": str(datalist.get("in_channels", 1)),
            **user,
            "datalist_json": datalist["datalist_json"],
            "dataset_dir": datalist["dataset_dir"],
        }
        if not a.summary_only:
            start = time.time()
            cmd = ["--bundle", a.bundle, "--methods", *a.methods, "--students", a.student,
                   "--seeds", *map(str, a.seeds), "--out", out, "--no_cost",
                   "--set", *(f"{k}={v}" for k, v in settings.items())]
            print(f"suite: {name}: python -m monai_rd.compare {' '.join(cmd)}", flush=True)
            status = max(status, compare_cli.main(cmd))
            print(f"suite: {name}: {time.time() - start:.0f} s", flush=True)
        rows += task_rows(name, out, a.methods, a.student, a.seeds, len(datalist["test"]))
    shown = {**DEMO_SETTINGS, **user}
    summaries = {n: d.get("summary", "") for n, d in tasks.items()}
    command = "python benchmarks/suite/run_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_summary(folder, rows, a.methods, shown, summaries, command)
    plots = write_plots(folder, outs, rows, a.methods, a.student, a.seeds)
    print(f"suite: wrote {os.path.join(folder, 'summary.md')}, summary.csv, " + ", ".join(map(os.path.basename, plots)))
    return status


if __name__ == "__main__":
    sys.exit(main())
