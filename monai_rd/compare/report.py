"""The comparison's results: one CSV row per run, a Markdown table (mean ± sd over seeds), and plots."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CSV_FIELDS", "read_run", "summarise", "wilson_interval", "write_csv", "write_markdown", "write_plots"]

CSV_FIELDS = (
    "method",
    "student",
    "seed",
    "accuracy",
    "auc",
    "n_test",
    "deployed_params",
    "latency_ms",
    "run_dir",
)


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` independent trials (95% by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_run(run: Any, cost: Mapping[str, float] | None = None, root: str | None = None) -> dict[str, Any]:
    """One CSV row from a finished :class:`~monai_rd.compare.grid.GridRun` (its ``test_metrics.json``); its
    ``run_dir`` relative to ``root`` when given (so the table can move with its runs)."""
    with open(run.test_metrics) as f:
        test = json.load(f)
    final = test["final"]
    cm = final.get("confusion_matrix")
    return {
        "method": run.method,
        "student": run.student,
        "seed": run.seed,
        "accuracy": final.get("accuracy"),
        "auc": final.get("auc"),
        "n_test": int(np.sum(cm)) if cm is not None else None,
        "deployed_params": None if cost is None else int(cost["params"]),
        "latency_ms": None if cost is None else round(float(cost["latency_ms"]), 3),
        "run_dir": os.path.relpath(run.folder, root) if root else run.folder,
        "confusion_matrix": cm,
        "class_names": test.get("class_names"),
    }


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """``results.csv``: one row per run, the :data:`CSV_FIELDS` columns."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return (math.nan, math.nan)
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (method, student): seeds, mean and sd of accuracy and AUC, the accuracy's 95% Wilson interval on the
    test images, the summed confusion matrix, deployed parameters and latency."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["student"]), []).append(row)
    out = {}
    for key, group in groups.items():
        acc, acc_sd = _mean_sd([r["accuracy"] for r in group])
        auc, auc_sd = _mean_sd([r["auc"] for r in group])
        n = min(int(r["n_test"]) for r in group if r.get("n_test")) if any(r.get("n_test") for r in group) else 0
        cms = [np.asarray(r["confusion_matrix"]) for r in group if r.get("confusion_matrix") is not None]
        out[key] = {
            "seeds": sorted(int(r["seed"]) for r in group),
            "accuracy": acc,
            "accuracy_sd": acc_sd,
            "accuracy_per_seed": [float(r["accuracy"]) for r in sorted(group, key=lambda r: int(r["seed"]))],
            "accuracy_ci95": wilson_interval(acc, n),
            "auc": auc,
            "auc_sd": auc_sd,
            "n_test": n,
            "confusion_matrix": np.sum(cms, axis=0) if cms else None,
            "class_names": group[0].get("class_names"),
            "deployed_params": group[0].get("deployed_params"),
            "latency_ms": _mean_sd([r.get("latency_ms") for r in group])[0],
        }
    return out


def _cell(mean: float, sd: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {sd:.3f}"


def write_markdown(
    summary: Mapping[tuple[str, str], Mapping[str, Any]],
    path: str,
    methods: Sequence[str],
    students: Sequence[str],
    title: str = "Comparison",
    descriptions: Mapping[str, str] | None = None,
) -> None:
    """``results.md``: accuracy and AUC, mean ± sd over seeds, rows method x columns student (the paper's
    layout), each accuracy with its 95% Wilson interval over the test images, then deployed size and latency."""
    descriptions = descriptions or {}
    methods = [m for m in methods if any((m, s) in summary for s in students)]
    lines = [f"# {title}", ""]
    header = "| method | " + " | ".join(f"{s} accuracy | {s} AUC" for s in students) + " |"
    lines += [header, "|---|" + "---|---|" * len(students)]
    for m in methods:
        cells = []
        for s in students:
            r = summary.get((m, s))
            if r is None:
                cells += ["–", "–"]
                continue
            lo, hi = r["accuracy_ci95"]
            cells.append(f"{_cell(r['accuracy'], r['accuracy_sd'])} [{lo:.2f}, {hi:.2f}]")
            cells.append(_cell(r["auc"], r["auc_sd"]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    seeds = sorted({k for r in summary.values() for k in r["seeds"]})
    n_test = sorted({r["n_test"] for r in summary.values()})
    lines += [
        "",
        f"Mean ± sd over seeds {', '.join(map(str, seeds))}; test split of {', '.join(map(str, n_test))} images. "
        "In brackets: the 95% Wilson interval of the mean accuracy for that many test images (the test set's "
        "sampling noise, which more seeds do not reduce): where two methods' intervals overlap widely, this test "
        "split cannot tell them apart.",
        "",
        "| method | student | seeds | accuracy per seed | deployed parameters | CPU latency (ms, batch 1, 1 thread) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        for s in students:
            r = summary.get((m, s))
            if r is None:
                continue
            params = "–" if r["deployed_params"] is None else f"{r['deployed_params'] / 1e6:.2f} M"
            latency = "–" if math.isnan(r["latency_ms"]) else f"{r['latency_ms']:.1f}"
            per_seed = ", ".join(f"{a:.3f}" for a in r["accuracy_per_seed"])
            lines.append(f"| {m} | {s} | {len(r['seeds'])} | {per_seed} | {params} | {latency} |")
    if descriptions:
        lines += ["", "Methods:", ""] + [f"- `{m}`: {descriptions[m]}" for m in methods if m in descriptions]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plots(
    summary: Mapping[tuple[str, str], Mapping[str, Any]],
    out: str,
    methods: Sequence[str],
    students: Sequence[str],
) -> list[str]:
    """Accuracy bars with the seeds' spread, a confusion matrix per method (one figure per student), and
    accuracy against deployed parameters and latency. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in methods if any((m, s) in summary for s in students)]
    written = []

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * len(students) + 1.5), 4))
    width = 0.8 / max(len(students), 1)
    for j, s in enumerate(students):
        xs, means, sds = [], [], []
        for i, m in enumerate(methods):
            r = summary.get((m, s))
            if r is None:
                continue
            x = i + (j - (len(students) - 1) / 2) * width
            xs.append(x)
            means.append(r["accuracy"])
            sds.append(r["accuracy_sd"])
            ax.scatter([x] * len(r["accuracy_per_seed"]), r["accuracy_per_seed"], color="k", s=10, zorder=3)
        ax.bar(xs, means, width=width * 0.9, yerr=sds, capsize=3, label=s, alpha=0.8)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (bar: mean, line: ± sd, dots: seeds)")
    ax.set_ylim(0, 1)
    if len(students) > 1:
        ax.legend(title="student")
    fig.tight_layout()
    written.append(os.path.join(out, "accuracy.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    for s in students:
        present = [m for m in methods if (m, s) in summary and summary[(m, s)]["confusion_matrix"] is not None]
        if not present:
            continue
        cols = min(4, len(present))
        rows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for ax, m in zip(axes.flat, present):
            cm = np.asarray(summary[(m, s)]["confusion_matrix"], dtype=float)
            norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            for (a, b), v in np.ndenumerate(cm):
                ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=7, color="k" if norm[a, b] < 0.6 else "w")
            names = summary[(m, s)]["class_names"] or list(range(len(cm)))
            ax.set_xticks(range(len(cm)), [str(n)[:6] for n in names], rotation=45, fontsize=7)
            ax.set_yticks(range(len(cm)), [str(n)[:6] for n in names], fontsize=7)
            ax.set_title(f"{m} (seeds summed)", fontsize=9)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
        for ax in list(axes.flat)[len(present) :]:
            ax.axis("off")
        fig.tight_layout()
        written.append(os.path.join(out, f"confusion_{s.replace(':', '_').replace('/', '_')}.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    panels = (
        ("deployed_params", axes[0], "deployed parameters (M)"),
        ("latency_ms", axes[1], "CPU latency, ms (batch 1, 1 thread)"),
    )
    for key, ax, label in panels:
        xs = []
        for (m, s), r in summary.items():
            x = r[key]
            if m not in colours or x is None or (isinstance(x, float) and math.isnan(x)):
                continue
            x = x / 1e6 if key == "deployed_params" else x
            xs.append(x)
            lo, hi = r["accuracy_ci95"]
            yerr = [[r["accuracy"] - lo], [hi - r["accuracy"]]]
            ax.errorbar([x], [r["accuracy"]], yerr=yerr, fmt="o", capsize=3, color=colours[m])
            name = m if len(students) == 1 else f"{m}/{s}"
            ax.annotate(name, (x, r["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if xs and max(xs) > 20 * min(xs):  # a log axis only when the costs span orders of magnitude
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (mean over seeds, 95% interval)")
    fig.tight_layout()
    written.append(os.path.join(out, "accuracy_vs_cost.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
