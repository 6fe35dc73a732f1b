"""One table of several runs of ``run_suite.py`` side by side: test accuracy per task, mean over tasks.

A screen compares many variants on one seed before any is run on three: each variant is a ``(tag, method)`` of
``run_suite.py`` runs, and the table gives its test accuracy per task and the mean over the tasks it was run on::

    python benchmarks/suite/screen_table.py --results benchmarks/results/suite/screen --seeds 0 \\
        "student:b8:student" "RD, tau 1:s8_t1:rd"

Each variant is ``label:tag:method``; a task whose run is missing shows a dash and is left out of that mean.

With several seeds (``--seeds 0 1 2``) a cell is the mean ± sd over the seeds found, and the last column the mean
over tasks ± the sd over seeds of each seed's mean over tasks (when every task has every seed). ``--baseline LABEL``
adds, per variant, the paired difference to that variant's mean over tasks, seed by seed, with a 95% t interval
over the seeds; ``--tasks`` keeps some tasks only (e.g. those every variant ran); ``--plot FILE`` draws each
variant's accuracy per task (mean over seeds, the Wilson 95% interval of an accuracy at that mean on the task's
test images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence

TASKS = ("aal_lobes_rgb25d", "aal_regions_axial", "brodmann_axial32", "ho_cortex_coronal", "jhu_tracts_sagittal")


def _test_metrics(results: str, tag: str, task: str, method: str, seed: int, student: str) -> dict | None:
    path = os.path.join(results, tag, task, "runs", method, student, f"seed{seed}", "eval", "test_metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["final"]


def test_accuracy(results: str, tag: str, task: str, method: str, seed: int, student: str = "resnet18") -> float | None:
    """The test accuracy of one finished run, or None when it has no ``test_metrics.json``.

    Args:
        results: folder holding one folder per tag (``run_suite.py --results``).
        tag, task, method, seed, student: which run (``monai_rd.compare``'s layout).
    """
    final = _test_metrics(results, tag, task, method, seed, student)
    return None if final is None else float(final["accuracy"])


def _parse(variant: str) -> tuple[str, str, str]:
    parts = variant.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"a variant is label:tag:method, got {variant!r}.")
    return parts[0], parts[1], parts[2]


def accuracies(results: str, variant: str, seeds: Sequence[int], tasks: Sequence[str] = TASKS) -> dict:
    """A variant's test accuracies: ``{task: {seed: accuracy}}`` for the runs that finished.

    Raises:
        ValueError: the variant is not ``label:tag:method``.
    """
    _, tag, method = _parse(variant)
    out = {}
    for task in tasks:
        found = {seed: test_accuracy(results, tag, task, method, seed) for seed in seeds}
        out[task] = {seed: acc for seed, acc in found.items() if acc is not None}
    return out


def seed_means(accs: dict, seeds: Sequence[int]) -> list[float] | None:
    """Each seed's mean over tasks, or None unless every task has every seed (else the means mix task sets)."""
    if not accs or any(set(seeds) - set(per) for per in accs.values()):
        return None
    return [statistics.fmean(per[seed] for per in accs.values()) for seed in seeds]


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a[i] - b[i]`` (one pair per seed) and its two-sided t interval over the pairs.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: fewer than two pairs, or lengths differ.
    """
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired interval needs two or more pairs of equal length; got {len(a)} and {len(b)}.")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def _cell(values: Sequence[float], n_seeds: int) -> str:
    if not values:
        return "—"
    if n_seeds == 1:
        return f"{values[0]:.3f}"
    text = f"{statistics.fmean(values):.3f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.3f}"
    return text + ("" if len(values) == n_seeds else f" ({len(values)} seed{'s' if len(values) > 1 else ''})")


def screen_table(
    results: str, variants: list[str], seeds: Sequence[int] = (0,), tasks: Sequence[str] = TASKS,
    baseline: str | None = None,
) -> str:
    """A Markdown table: one row per variant, one column per task, and the mean over the tasks run.

    Args:
        results: folder holding one folder per tag.
        variants: ``label:tag:method`` strings.
        seeds: the seeds whose runs are read.
        tasks: the task columns.
        baseline: label of one variant: adds a column with each variant's paired difference to it (needs every
            task and seed of both).

    Returns:
        The table, one line per row.

    Raises:
        ValueError: a variant is not ``label:tag:method``, or ``baseline`` is not one of their labels.
    """
    seeds = list(seeds)
    table = {_parse(v)[0]: accuracies(results, v, seeds, tasks) for v in variants}
    if baseline is not None and baseline not in table:
        raise ValueError(f"--baseline {baseline!r} is not the label of a variant ({', '.join(table)}).")
    extra = f" minus {baseline} (95% t, {len(seeds)} seeds) |" if baseline else ""
    lines = ["| variant | " + " | ".join(f"`{t}`" for t in tasks) + " | mean (tasks) |" + extra,
             "|---|" + "---|" * (len(tasks) + 1 + bool(baseline))]
    base = seed_means(table[baseline], seeds) if baseline else None
    for label, accs in table.items():
        per_task = [statistics.fmean(accs[t].values()) if accs[t] else None for t in tasks]
        done = [a for a in per_task if a is not None]
        means = seed_means(accs, seeds)
        if not done:
            mean = "—"
        elif means is not None and len(seeds) > 1:
            mean = f"{statistics.fmean(done):.3f} ± {statistics.stdev(means):.3f}"
        else:
            mean = f"{statistics.fmean(done):.3f} ({len(done)})"
        cells = [_cell(list(accs[t].values()), len(seeds)) for t in tasks]
        row = f"| {label} | " + " | ".join(cells) + f" | {mean} |"
        if baseline:
            if label == baseline:
                row += " — |"
            elif means is None or base is None or len(seeds) < 2:
                row += " n/a |"
            else:
                d, lo, hi = paired_difference(means, base)
                row += f" {d:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
        lines.append(row)
    return "\n".join(lines)


def plot(results: str, variants: list[str], seeds: Sequence[int], path: str, tasks: Sequence[str] = TASKS) -> None:
    """Bars of each variant's test accuracy per task (mean over seeds) with the Wilson 95% interval of an accuracy
    at that mean on the task's test images (counted from the run's confusion matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # run_suite.py is a script beside this one, not a package module
        sys.path.insert(0, here)
    from run_suite import wilson_interval

    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(tasks) * len(variants)), 4))
    width = 0.8 / len(variants)
    for j, variant in enumerate(variants):
        label, tag, method = _parse(variant)
        accs = accuracies(results, variant, seeds, tasks)
        xs, means, low, high = [], [], [], []
        for i, task in enumerate(tasks):
            if not accs[task]:
                continue
            seed = next(iter(accs[task]))
            n_test = int(sum(map(sum, _test_metrics(results, tag, task, method, seed, "resnet18")["confusion_matrix"])))
            m = statistics.fmean(accs[task].values())
            lo, hi = wilson_interval(m, n_test)
            xs.append(i + (j - (len(variants) - 1) / 2) * width)
            means.append(m)
            low.append(m - lo)
            high.append(hi - m)
        ax.bar(xs, means, width=width * 0.9, yerr=[low, high], capsize=2, label=label, alpha=0.85)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"test accuracy (mean over {len(seeds)} seed(s), Wilson 95%)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(len(variants), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="label:tag:method")
    parser.add_argument("--results", required=True, help="folder holding one folder per tag")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--baseline", help="label of the variant each other is compared with, seed by seed")
    parser.add_argument("--plot", help="write the accuracy figure (PNG) here")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                        help="the task columns (default: all five); the means and the paired difference use these")
    args = parser.parse_args(argv)
    print(screen_table(args.results, args.variants, args.seeds, tasks=args.tasks, baseline=args.baseline))
    if args.plot:
        plot(args.results, args.variants, args.seeds, args.plot, tasks=args.tasks)


if __name__ == "__main__":
    sys.exit(main())
