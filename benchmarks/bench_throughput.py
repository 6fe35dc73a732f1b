#!/usr/bin/env python
"""Training throughput (images/s) at a BUSI-sized workload: the student alone, RD cached, RD live, compute bound.

The workload is the demo bundle's real MRI patches resized to 224 px (``--image_size``), with as many training
images as BUSI's training split (the demo's 584 by default; ``--train_images`` takes a class-balanced subset,
e.g. on a CPU). In one process, on the same data, batch size and DataLoader, this reports training images per
second of:

* ``student_alone``: the bundle with ``method=student`` (CE only);
* ``rd_cached``: RD with the teacher-feature cache (the default);
* ``rd_live``: RD with the teacher run on every batch;
* ``student_compute_bound``: the student-alone training step on batches already on the device (no loader,
  no augmentation, no host-to-device copy): what the student's step costs by itself;
* ``teacher_cache_build``: the one-off teacher pass that fills the cache (images/s of ``cache.build``).

and the ratios ``rd_cached / student_alone`` (what distillation with the cache costs: 1.0 = free) and
``student_alone / student_compute_bound`` (the share of the step's own speed the loader lets through: 1.0 = the
loader keeps up), all as images/s ratios within this run. Each mode is the bundle's own training workflow, built
by ``benchmarks/bench_speed.py``'s :func:`~bench_speed.build_modes` (handlers dropped; the cache build timed as the
method's ``prepare`` runs it), and the timed epochs of the modes are interleaved after a warm-up round; each figure
is the median over its timed epochs. As in ``bench_speed.py``, the teacher's and Φ's calls are counted in the timed
epochs and the run stops if a mode did not run what it is named for.

Usage (from the repository root)::

    python benchmarks/bench_throughput.py --device cuda       # writes benchmarks/results/throughput-<gpu>.json
    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py --train_images 48 --batch_size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import bench_speed  # noqa: E402  (the bundle's workflow per mode, the per-mode runner and the machine description)

REPO = bench_speed.REPO
THROUGHPUT_MODES = ("student_alone", "rd_cached", "rd_live")
COMPUTE = "student_compute_bound"

__all__ = ["main", "parse_args", "machine_name"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config_file", default=bench_speed.DEFAULT_CONFIG, help="bundle train.json (default: the demo's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    ap.add_argument("--image_size", type=int, default=224, help="training image size (default 224, as BUSI)")
    ap.add_argument(
        "--train_images", type=int, default=None, help="class-balanced subset of the training split (default: all)"
    )
    ap.add_argument("--batch_size", type=int, default=32, help="training batch size (default 32)")
    ap.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: the bundle's)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per mode (default 2)")
    ap.add_argument("--warmup_iters", type=int, default=2, help="iterations of each mode's warm-up epoch (default 2)")
    ap.add_argument("--max_iters", type=int, default=None, help="cap on iterations per timed epoch")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--machine", default=None, help="name in the output file (default: from the device)")
    ap.add_argument("--json", default=None, help="output (default benchmarks/results/throughput-<machine>.json)")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.warmup_iters < 0 or args.batch_size < 1:
        ap.error("--epochs and --batch_size must be >= 1, --warmup_iters >= 0")
    if args.train_images is not None and args.train_images < args.batch_size:
        ap.error("--train_images must be at least --batch_size (the last incomplete batch is dropped)")
    return args


def machine_name(device: torch.device) -> str:
    """``cpu-<N>core`` or the GPU's name as a file-name slug (``nvidia-h100-80gb-hbm3``)."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu-{cores}core"


def _subset_datalist(config_file: str, n_train: int | None, folder: str) -> tuple[str, int]:
    """A datalist with the first ``n_train`` training images taken class by class in turn (all by default)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), "datalist.json")
    full = json.load(open(path))
    if n_train is None:
        return path, len(full["training"])
    by_class: dict[Any, list] = {}
    for item in full["training"]:
        by_class.setdefault(json.dumps(item["label"]), []).append(item)
    queues, train = list(by_class.values()), []
    while len(train) < n_train and any(queues):
        for q in queues:
            if q and len(train) < n_train:
                train.append(q.pop(0))
    sub = dict(full, training=train)
    out = os.path.join(folder, "datalist.json")
    with open(out, "w") as f:
        json.dump(sub, f)
    return out, len(train)


def _time_epoch(trainer, data, iters: int, device: torch.device) -> float:
    """Seconds of one fresh epoch of ``iters`` iterations over ``data`` (the compute-bound mode's batches)."""
    from ignite.engine import Engine

    bench_speed._sync(device)
    t0 = time.perf_counter()
    trainer.state.max_epochs = None
    Engine.run(trainer, data=data, max_epochs=1, epoch_length=iters)
    bench_speed._sync(device)
    return time.perf_counter() - t0


def _on_device(trainer, iters: int, device: torch.device) -> list[dict]:
    """The first ``iters`` batches of the trainer's loader, image and label already on the device."""
    batches = []
    for batch in trainer.data_loader:
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        if len(batches) == iters:
            break
    return batches


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result dict and writes it as JSON."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = bench_speed.start_device(args)
    machine = bench_speed.machine_info(device)
    machine["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    name = args.machine or machine_name(device)
    out_path = args.json or os.path.join(REPO, "benchmarks", "results", f"throughput-{name}.json")

    with tempfile.TemporaryDirectory() as tmp:
        datalist, n_train = _subset_datalist(args.config_file, args.train_images, tmp)
        overrides: dict[str, Any] = {"image_size": args.image_size, "batch_size": args.batch_size}
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers
        if args.train_images is not None:
            overrides["datalist_json"] = datalist
        runs = bench_speed.build_modes(args.config_file, overrides, THROUGHPUT_MODES, device, args.max_iters, tmp)
        cache = bench_speed.cache_summary(runs["rd_cached"])
        build = {
            "images": cache["items"],
            "seconds": cache["build_seconds"],
            "images_per_second": cache["items"] / cache["build_seconds"],
        }
        iters = runs["student_alone"].iters
        student = runs["student_alone"].trainer
        on_device = _on_device(student, iters, device)

        seconds: dict[str, list[float]] = {m: [] for m in (*THROUGHPUT_MODES, COMPUTE)}
        order = [*THROUGHPUT_MODES, COMPUTE]

        def epoch(mode: str, n: int, timed: bool) -> float:
            if mode == COMPUTE:
                return _time_epoch(student, on_device, n, device)
            return runs[mode].run_epoch(iters=n, timed=timed)[0]  # counts the teacher's and Phi's calls when timed

        if args.warmup_iters:
            for mode in order:
                epoch(mode, min(args.warmup_iters, iters), timed=False)
        for rnd in range(args.epochs):  # a rotating order, so drift on a shared machine hits every mode alike
            for mode in order[rnd % len(order):] + order[: rnd % len(order)]:
                dt = epoch(mode, iters, timed=True)
                seconds[mode].append(dt)
                print(f"[throughput] {mode:<22} {dt:8.2f} s", flush=True)
        bench_speed.check_modes(runs)  # stops if a mode did not run what it is named for

    per_epoch = iters * args.batch_size
    ips = {mode: per_epoch / statistics.median(s) for mode, s in seconds.items()}
    ips["teacher_cache_build"] = build["images_per_second"]
    result: dict[str, Any] = {
        **bench_speed.result_header("bench_throughput.py", argv, machine),
        "workload": {
            "source": "bundles/rd_demo data (real MRI patches) resized to image_size",
            "config_file": os.path.relpath(os.path.abspath(args.config_file), REPO),
            "image_size": args.image_size,
            "train_images": n_train,
            "batch_size": args.batch_size,
            "iters_per_epoch": iters,
            "images_per_epoch": per_epoch,
            "student": runs["student_alone"].options.student,
            "teacher": runs["rd_cached"].options.teacher_name,
            "num_workers": runs["student_alone"].options.num_workers,
        },
        "images_per_second": ips,
        "epoch_seconds": seconds,
        "teacher_cache_build": build,
        "ratios": {
            "rd_cached_over_student_alone": ips["rd_cached"] / ips["student_alone"],
            "rd_live_over_student_alone": ips["rd_live"] / ips["student_alone"],
            "student_alone_over_compute_bound": ips["student_alone"] / ips[COMPUTE],
        },
        "ratio_definitions": "images/s over images/s, medians of this run's timed epochs (1.0 = as fast)",
        "statistic": (
            f"median of {args.epochs} timed epoch(s) per mode after a warm-up of {args.warmup_iters} iteration(s)"
        ),
    }
    # a shared machine only adds time: a large spread between a mode's epochs flags a ratio to distrust
    result["relative_spread"] = {m: (max(s) - min(s)) / statistics.median(s) for m, s in seconds.items()}
    if hasattr(os, "getloadavg"):
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_seconds"] = time.perf_counter() - t_start
    for mode, value in ips.items():
        print(f"{mode:<24}{value:10.1f} images/s")
    print(json.dumps(result["ratios"], indent=1))
    bench_speed.write_result(result, out_path)
    return result


if __name__ == "__main__":
    main()
