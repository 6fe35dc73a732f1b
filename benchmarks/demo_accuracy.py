"""Test accuracy of the demo bundle: RD variants beside the same student trained alone, over several seeds.

Each run trains with the bundle's train.json (the defaults users get, plus the variant's overrides), selects
the checkpoint on the validation split, then evaluates it on the test split with evaluate.json. Results go to
a JSON file and a markdown table.

    python benchmarks/demo_accuracy.py --seeds 0 1 2 --json benchmarks/results/demo_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import monai.bundle
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "bundles", "rd_demo", "configs")

# name -> overrides of train.json
VARIANTS: dict[str, dict] = {
    "student alone": {"method": "student"},
    "RD (default: lean Φ, cached teacher)": {},
    "RD, paper Φ (basic blocks at 512)": {"phi_block": "basic", "phi_hidden": None},
    "RD, live teacher": {"cache_teacher": False},
    "RD, 4 cached views": {"cache_views": 4},
}


def run_variant(name: str, overrides: dict, seed: int, work_dir: str) -> dict:
    """Train then test one variant; returns its test metrics and timings."""
    tag = f"{abs(hash(name)) % 10**8}_{seed}"
    common = {
        "bundle_root": os.path.join(REPO, "bundles", "rd_demo"),
        "ckpt_dir": os.path.join(work_dir, tag, "models"),
        "output_dir": os.path.join(work_dir, tag, "eval"),
        "seed": seed,
        **overrides,
    }
    t0 = time.perf_counter()
    monai.bundle.run(config_file=os.path.join(CONFIGS, "train.json"), **common)
    train_s = time.perf_counter() - t0
    evaluate = [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")]
    monai.bundle.run(config_file=evaluate, **common)
    test = json.load(open(os.path.join(common["output_dir"], "test_metrics.json")))
    val = json.load(open(os.path.join(common["output_dir"], "val_metrics.json")))
    return {
        "variant": name,
        "seed": seed,
        "overrides": overrides,
        "train_seconds": train_s,
        "best_val_accuracy": val["best_metric"],
        "best_val_epoch": val["best_metric_epoch"],
        "test_accuracy": test["final"]["accuracy"],
        "test_auc": test["final"]["auc"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    p.add_argument("--work_dir", default="/tmp/rd_demo_accuracy")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--markdown", default=None, help="write a markdown table here")
    p.add_argument("--epochs", type=int, default=None, help="override the bundle's epochs")
    a = p.parse_args(argv)
    runs = []
    for seed in a.seeds:
        for name in a.variants:
            ov = dict(VARIANTS[name])
            if a.epochs is not None:
                ov["epochs"] = a.epochs
            runs.append(run_variant(name, ov, seed, a.work_dir))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for name in a.variants:
        accs = [r["test_accuracy"] for r in runs if r["variant"] == name]
        aucs = [r["test_auc"] for r in runs if r["variant"] == name]
        secs = [r["train_seconds"] for r in runs if r["variant"] == name]
        summary[name] = {
            "test_accuracy_mean": statistics.mean(accs),
            "test_accuracy_std": statistics.pstdev(accs),
            "test_auc_mean": statistics.mean(aucs),
            "train_seconds_mean": statistics.mean(secs),
            "n": len(accs),
        }
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_threads": torch.get_num_threads(),
        },
        "seeds": a.seeds,
        "runs": runs,
        "summary": summary,
    }
    lines = ["| variant | test accuracy (mean ± sd) | test AUC | train s/run | runs |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['test_accuracy_mean']:.3f} ± {s['test_accuracy_std']:.3f} | {s['test_auc_mean']:.3f} "
            f"| {s['train_seconds_mean']:.0f} | {s['n']} |"
        )
    table = "\n".join(lines)
    print(table)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        json.dump(result, open(a.json, "w"), indent=2)
    if a.markdown:
        open(a.markdown, "w").write(table + "\n")
    return result


if __name__ == "__main__":
    main()
