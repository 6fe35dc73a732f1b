"""``python -m monai_rd.compare``: RD against its ablations and the classic baselines, on a bundle's own data.

Usage::

    python -m monai_rd.compare --bundle bundles/rd_demo --methods student kd rd --seeds 0 1 2
    python -m monai_rd.compare --bundle bundles/rd_busi --methods student kd fitnets rd \\
        --students resnet18 mobilenetv2 --seeds 0 1 2 --out compare/ --set dataset_dir=/data/BUSI

Each (method, student, seed) is trained by ``python -m monai.bundle run`` with the bundle's ``train.json`` and
``--method``/``--student``/``--seed`` (same data, schedule and checkpoint selection for every method), in its
own ``<out>/runs/<method>/<student>/seed<k>/``, then tested with ``evaluate.json``. Invoking the same command
again skips the runs that have test metrics and resumes the others; each run records its settings
(``settings.json``), and a command whose settings (``--set`` values, the bundle's options, a datalist's content)
differ from those of a run already in ``<out>`` is refused before anything runs: use another ``--out``. A
``--set`` key the bundle does not have is refused with the closest known ones. ``<out>`` gets ``results.csv`` (one
row per run), ``results.md`` (mean ± sd over seeds, method x student, accuracy and AUC) and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from monai_rd.bundle.command_line import check_overrides
from monai_rd.compare.grid import GridRun, bundle_default, parse_overrides, plan_grid, run_grid
from monai_rd.errors import MonaiRDError, OptionError
from monai_rd.methods import METHODS

__all__ = ["main"]

COSTS_FILE = "costs.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monai_rd.compare",
        description="Train and test a grid of methods x students x seeds of one bundle, then tabulate and plot.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods:\n" + "\n".join(f"  {m.name:14s} {m.summary}" for m in METHODS.values()),
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/rd_demo")
    p.add_argument("--methods", nargs="+", default=["student", "kd", "rd"], help="methods (default: student kd rd)")
    p.add_argument("--students", nargs="+", default=None, help="students (default: the bundle's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--out", default="compare", help="output folder (default: compare)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other bundle options for every run")
    p.add_argument("--keep_checkpoints", action="store_true", help="keep finished runs' checkpoint_epoch=N.pt")
    p.add_argument("--no_cost", action="store_true", help="skip measuring deployed parameters and latency")
    return p


def _costs(out: str, bundle: str, runs: Sequence[GridRun], overrides: dict[str, str]) -> dict[str, dict[str, float]]:
    """Deployed parameters and latency per (method, student), measured once and kept in ``costs.json``."""
    from monai_rd.compare.cost import deployed_cost

    path = os.path.join(out, COSTS_FILE)
    costs = {}
    if os.path.isfile(path):
        with open(path) as f:
            costs = json.load(f)
    for run in runs:
        key = f"{run.method}|{run.student}"
        if key not in costs:
            costs[key] = deployed_cost(bundle, run.method, run.student, run.ckpt_dir, overrides)
            with open(path, "w") as f:
                json.dump(costs, f, indent=1)
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid and write the report; returns the exit status (1 when a run failed)."""
    args = _parser().parse_args(argv)
    try:
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            raise OptionError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
        if not os.path.isfile(os.path.join(args.bundle, "configs", "train.json")):
            raise OptionError(
                f"--bundle {args.bundle!r} has no configs/train.json; pass a bundle folder such as bundles/rd_demo."
            )
        overrides = parse_overrides(args.set)
        configs = os.path.join(args.bundle, "configs")
        check_overrides(overrides, [os.path.join(configs, f) for f in ("train.json", "evaluate.json")], source="--set")
        students = args.students or [str(bundle_default(args.bundle, "student") or "resnet18")]
        bundle = os.path.abspath(args.bundle)
        os.makedirs(args.out, exist_ok=True)
        runs = plan_grid(os.path.abspath(args.out), list(dict.fromkeys(args.methods)), students, args.seeds)
        finished, failed = run_grid(bundle, runs, overrides, keep_checkpoints=args.keep_checkpoints)
        methods = list(dict.fromkeys(args.methods))
        done = [r for r in runs if r in finished]
        write_report(args.out, bundle, done, methods, students, overrides, measure_cost=not args.no_cost)
    except MonaiRDError as err:
        print(f"monai_rd: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    for run, reason in failed:
        print(f"failed: {run.label}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def write_report(
    out: str,
    bundle: str,
    runs: Sequence[GridRun],
    methods: Sequence[str],
    students: Sequence[str],
    overrides: dict[str, str],
    measure_cost: bool = True,
) -> None:
    """``results.csv``, ``results.md`` and the plots of the finished ``runs`` in ``out``."""
    from monai_rd.compare import report

    if not runs:
        print("no finished run to report")
        return
    costs = _costs(out, bundle, runs, overrides) if measure_cost else {}
    rows = [report.read_run(r, costs.get(f"{r.method}|{r.student}"), root=os.path.abspath(out)) for r in runs]
    report.write_csv(rows, os.path.join(out, "results.csv"))
    summary = report.summarise(rows)
    title = f"{os.path.basename(bundle.rstrip('/'))}: methods compared"
    descriptions = {m: METHODS[m].summary for m in methods}
    report.write_markdown(summary, os.path.join(out, "results.md"), methods, students, title, descriptions)
    plots = report.write_plots(summary, out, methods, students)
    print(f"wrote {os.path.join(out, 'results.csv')}, results.md and {', '.join(os.path.basename(p) for p in plots)}")
