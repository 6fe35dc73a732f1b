#!/usr/bin/env python
"""Latency of the deployed student: eager PyTorch against its TorchScript and ONNX Runtime exports.

The demo bundle's student (``network_def`` of ``bundles/rd_demo/configs/train.json``: ResNet18, 1 channel,
5 classes, 64 px) is exported as ``python -m monai_rd.export`` does (``torch.jit.trace``; ``torch.onnx.export``
with ``dynamo=True`` and a dynamic batch, run by ONNX Runtime's CPU provider) and fed the demo's real PNGs
through the bundle's own preprocessing, at batch 1 and batch 32. Before timing, each export's logits are checked
against the eager model's (within 1e-4).

Timing, in one process: PyTorch and ONNX Runtime get the same number of threads (``--threads``, default the
CPUs this process may use). For each batch size, every backend is warmed up, then ``--rounds`` rounds each time
``--calls`` back-to-back calls per backend, the backends' order rotating from round to round so drift on a shared
machine affects all alike. A backend's latency is the median over rounds of its mean call time (``min_ms``: the
fastest round; other processes only ever add time). ``ratio_to_eager`` divides each backend's median by eager's
from the same run: the comparison this benchmark is for; the absolute times depend on the machine and its load.

Usage (from the repository root)::

    python benchmarks/bench_export.py --json benchmarks/results/<machine>.json
    python benchmarks/bench_export.py --threads 1 --json benchmarks/results/export-cpu-2core.json  # a shared CPU

On a CPU shared with other work, use ``--threads 1``: PyTorch's OpenMP threads wait for each other when another
process holds a core, and a 2-thread eager ResNet18 then ran 20x slower than a 1-thread one here, which measures
the contention, not the backends.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, REPO)

BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
BACKENDS = ("eager", "torchscript", "onnxruntime")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(threads: int) -> dict[str, Any]:
    import monai
    import onnxruntime

    return {
        "name": f"{os.cpu_count()}-core CPU ({_cpu_model()}), shared with other work",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "monai": monai.__version__,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _student_and_images(n_images: int) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """The demo's deployed student (seeded weights: latency does not depend on their values) and real images."""
    from monai.bundle import ConfigParser
    from monai.utils import convert_to_tensor

    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    parser.update({"bundle_root": BUNDLE})
    options = parser.get_parsed_content("options")  # the bundle's options, typed and checked
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    transform = parser.get_parsed_content("validate#preprocessing")
    paths = sorted(glob.glob(os.path.join(BUNDLE, "data", "*", "*.png")))[:: 7][:n_images]
    x = torch.stack([convert_to_tensor(transform({"image": p, "label": 0})["image"], track_meta=False) for p in paths])
    config = {
        "bundle": "bundles/rd_demo",
        "student": options.student,
        "in_channels": int(x.shape[1]),
        "image_size": list(x.shape[2:]),
        "num_classes": options.num_classes,
        "parameters": sum(p.numel() for p in net.parameters()),
        "images": f"{len(paths)} demo PNGs (bundles/rd_demo/data) through the bundle's validation preprocessing",
    }
    return net, x.float(), config


def _backends(net: torch.nn.Module, example: torch.Tensor, folder: str, threads: int) -> dict[str, Callable]:
    import onnxruntime as ort

    from monai_rd.export import export_to_file, load_exported

    ts_path, onnx_path = os.path.join(folder, "student.ts"), os.path.join(folder, "student.onnx")
    with torch.no_grad():
        export_to_file(net, example, "torchscript", ts_path)
        export_to_file(net, example, "onnx", onnx_path)
    scripted = load_exported(ts_path, "torchscript")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return {
        "eager": net,
        "torchscript": scripted,
        "onnxruntime": lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]),
    }


def _time_calls(fn: Callable, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls * 1000.0


def run(batch_sizes: Sequence[int], rounds: int, calls: int, warmup: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    net, images, config = _student_and_images(max(batch_sizes))
    result: dict[str, Any] = {"machine": _machine(threads), "config": config, "batches": {}}
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        fns = _backends(net, images[:2], folder, threads)
        for bs in batch_sizes:
            x = images[:bs].contiguous()
            if len(x) < bs:
                x = x.repeat((bs + len(x) - 1) // len(x), 1, 1, 1)[:bs].contiguous()
            expected = net(x)
            diffs = {b: float((fn(x) - expected).abs().max()) for b, fn in fns.items()}
            bad = {b: d for b, d in diffs.items() if not d <= 1e-4}
            if bad:
                raise RuntimeError(f"batch {bs}: exports differ from the eager model by {bad}; not timing them.")
            for fn in fns.values():
                _time_calls(fn, x, warmup)
            times: dict[str, list[float]] = {b: [] for b in fns}
            order = list(fns)
            for r in range(rounds):
                for b in order[r % len(order) :] + order[: r % len(order)]:
                    times[b].append(_time_calls(fns[b], x, calls))
            median = {b: statistics.median(t) for b, t in times.items()}
            result["batches"][str(bs)] = {
                b: {
                    "median_ms": round(median[b], 3),
                    "min_ms": round(min(times[b]), 3),
                    "per_image_ms": round(median[b] / bs, 4),
                    "ratio_to_eager": round(median[b] / median["eager"], 3),
                    "max_abs_diff_to_eager": diffs[b],
                }
                for b in fns
            }
    result["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per batch size (median reported)")
    ap.add_argument("--calls", type=int, default=10, help="back-to-back calls per backend and round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls per backend first")
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--threads", type=int, default=default_threads, help="threads for PyTorch and ONNX Runtime alike")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--note", help="recorded in the JSON: how the machine was shared, why these settings")
    args = ap.parse_args(argv)
    result = {
        "benchmark": "benchmarks/bench_export.py",
        "command": "python " + " ".join(["benchmarks/bench_export.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"note": args.note} if args.note else {}),
        **run(args.batch_sizes, args.rounds, args.calls, args.warmup, args.threads),
    }
    for bs, rows in result["batches"].items():
        timed = (f"{b} {r['median_ms']:.2f} ms ({r['ratio_to_eager']:.2f}x eager)" for b, r in rows.items())
        print(f"batch {bs}: " + ", ".join(timed))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
