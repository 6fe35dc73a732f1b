"""One table of a screen: the test accuracy of one seed on every task, for several runs of ``run_suite.py``.

A screen compares many variants on one seed before any is run on three: each variant is a ``(tag, method)`` of
``run_suite.py`` runs, and the table gives its test accuracy per task and the mean over the tasks it was run on::

    python benchmarks/suite/screen_table.py --results benchmarks/results/suite/screen --seed 0 \\
        "student:b8:student" "RD, tau 1:s8_t1:rd"

Each variant is ``label:tag:method``; a task whose run is missing shows a dash and is left out of that mean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

TASKS = ("aal_lobes_rgb25d", "aal_regions_axial", "brodmann_axial32", "ho_cortex_coronal", "jhu_tracts_sagittal")


def test_accuracy(results: str, tag: str, task: str, method: str, seed: int, student: str = "resnet18") -> float | None:
    """The test accuracy of one finished run, or None when it has no ``test_metrics.json``.

    Args:
        results: folder holding one folder per tag (``run_suite.py --results``).
        tag, task, method, seed, student: which run (``monai_rd.compare``'s layout).
    """
    path = os.path.join(results, tag, task, "runs", method, student, f"seed{seed}", "eval", "test_metrics.json")
    if not os.path.isfile(path):
        return None
    return float(json.load(open(path))["final"]["accuracy"])


def screen_table(results: str, variants: list[str], seed: int = 0, tasks: tuple[str, ...] = TASKS) -> str:
    """A Markdown table: one row per variant, one column per task, and the mean over the tasks run.

    Args:
        results: folder holding one folder per tag.
        variants: ``label:tag:method`` strings.
        seed: the seed whose runs are read.
        tasks: the task columns.

    Returns:
        The table, one line per row.

    Raises:
        ValueError: a variant is not ``label:tag:method``.
    """
    lines = ["| variant | " + " | ".join(f"`{t}`" for t in tasks) + " | mean (tasks) |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for variant in variants:
        parts = variant.rsplit(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"a variant is label:tag:method, got {variant!r}.")
        label, tag, method = parts
        accs = [test_accuracy(results, tag, t, method, seed) for t in tasks]
        done = [a for a in accs if a is not None]
        mean = f"{sum(done) / len(done):.3f} ({len(done)})" if done else "—"
        lines.append(f"| {label} | " + " | ".join("—" if a is None else f"{a:.3f}" for a in accs) + f" | {mean} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="label:tag:method")
    parser.add_argument("--results", required=True, help="folder holding one folder per tag")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(screen_table(args.results, args.variants, args.seed))


if __name__ == "__main__":
    sys.exit(main())
