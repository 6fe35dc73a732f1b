#!/usr/bin/env python
"""Host memory and per-batch read cost of the memory-mapped teacher-feature cache at ``rd_chestxray``'s scale.

A synthetic datalist of ``--items`` (default 100,000) tiny files goes through the real
:class:`~monai_rd.data.TeacherFeatureCache` write path with ``cache_dir`` (content hashing, keys, the teacher in
batches, rows written one teacher batch at a time into a ``.npy`` memmap, atomic rename, manifest), with a
synthetic teacher that returns features of a realistic shape (``--channels`` x ``--spatial`` x ``--spatial``,
float16). Then:

* ``rebuild``: a second cache object builds from the same datalist: it must read the finished shard and run no
  teacher (what every later run, and every DataLoader worker, does);
* ``epoch_1``: one shuffled epoch of ``gather`` calls of ``--batch_size`` rows (the trainer's per-batch read)
  right after the build, as a training run's first epoch: each row is touched for the first time (mapped into the
  process, and read from the disk where the page cache no longer holds it); a sample of batches is checked
  against the features the synthetic teacher gives for those images;
* ``epoch_2``: the next epoch (another order): the rows are mapped and cached, as in later epochs;
* ``cold``: ``--cold_batches`` batches from a pickled copy of the cache (what a DataLoader worker gets: it reopens
  the shard) after the original was dropped and ``posix_fadvise(DONTNEED)`` evicted the shard's pages from the
  page cache (this file only), so each row is read from the disk;
* ``in_memory_reference``: the same gathers from an in-memory cache (no ``cache_dir``) of the first
  ``--reference_items`` images, the cost a batch read has without any file (it does not depend on N);
* ``student_step``: the median training step of a small student (the demo's ResNet18 at 64 px, batch 32, SGD), to
  put the gather's cost beside what a cached RD step costs anyway.

Memory is the process's anonymous resident memory (``RssAnon`` of ``/proc/self/status``, sampled every 2 ms by
a thread): heap, tensors and Python objects, i.e. what the cache costs beside the memmap. The shard's pages
count as file-backed memory (``RssFile``), which the kernel can drop and re-read; it is reported separately.

Usage (from the repository root; about 2-4 minutes and 5 GB of temporary disk on a 2-core CPU)::

    python benchmarks/bench_cache_memory.py --json benchmarks/results/cache-memory-cpu-2core.json
    python benchmarks/bench_cache_memory.py --channels 2048          # rd_chestxray's real shape: a 20 GB shard
    python benchmarks/bench_cache_memory.py --device cuda            # gather onto a GPU; adds its peak memory
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):  # run from a checkout without `pip install -e .`; reuse bench_speed's machine description
    if _p not in sys.path:
        sys.path.insert(1, _p)

from bench_speed import (  # noqa: E402
    _malloc_trim,
    cpu_pressure,
    machine_info,
    result_header,
    start_device,
    write_result,
)

from monai_rd.data import TeacherFeatureCache  # noqa: E402

__all__ = ["main", "parse_args"]

GOAL_ANON_MB = 2048


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000, help="synthetic images in the datalist")
    p.add_argument("--channels", type=int, default=512, help="teacher feature channels C_T (2048 for ResNet50)")
    p.add_argument("--spatial", type=int, default=7, help="teacher feature map side")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size of the gathers")
    p.add_argument("--build_batch", type=int, default=256, help="teacher batch size while building")
    p.add_argument("--cold_batches", type=int, default=300, help="batches read with the shard out of the page cache")
    p.add_argument("--check_batches", type=int, default=50, help="gathered batches checked against the teacher")
    p.add_argument(
        "--reference_items", type=int, default=10_000, help="items of the in-memory cache the gathers are compared with"
    )
    p.add_argument("--student_steps", type=int, default=5, help="timed student steps (after one warm-up)")
    p.add_argument("--device", default="cpu", help="device the batches are gathered onto (cpu, cuda, cuda:N)")
    p.add_argument("--workdir", default=None, help="folder for the files and the cache (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", default=None, help="write the result here")
    return p.parse_args(argv)


class SyntheticImage:
    """The cache's ``transform``: an item's id as a (1,) tensor (the file is hashed, never decoded)."""

    def __call__(self, item: dict) -> dict:
        return {**item, "image": torch.tensor([float(item["id"])])}


class SyntheticTeacher(nn.Module):
    """(B, 1) ids -> (B, C, s, s) features: a fixed random map plus an id-dependent offset, so rows are checkable."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        base = torch.randn(channels, spatial, spatial, generator=torch.Generator().manual_seed(0))
        self.register_buffer("base", base)
        self.calls = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.base[None] + (ids.reshape(-1, 1, 1, 1) % 997) / 64


class MemorySampler:
    """Peak ``RssAnon`` and ``RssFile`` (bytes) of this process per phase, sampled by a background thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peaks: dict[str, dict[str, int]] = {}
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    name, value, _ = line.split()
                    out[name[:-1]] = int(value) * 1024
        return out

    def _record(self) -> None:
        now, peak = self.read(), self.peaks.setdefault(self.phase, {})
        for k, v in now.items():
            peak[k] = max(peak.get(k, 0), v)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def start(self) -> MemorySampler:
        self._record()
        self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        gc.collect()
        _malloc_trim()
        self._record()
        self.phase = phase
        self._record()

    def stop(self) -> dict[str, dict[str, float]]:
        self._record()
        self._stop.set()
        self._thread.join()
        return {p: {f"peak_{k}_mb": round(v / 2**20, 1) for k, v in d.items()} for p, d in self.peaks.items()}


def _make_datalist(folder: str, n: int) -> list[dict]:
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"img{i:06d}.bin")
        with open(path, "wb") as f:
            f.write(i.to_bytes(4, "little"))
        items.append({"image": path, "id": i})
    return items


def _evict(path: str) -> bool:
    """Drop ``path``'s clean pages from the page cache (this file only); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _mem_available_gib() -> float | None:
    """MemAvailable of /proc/meminfo: what the page cache can grow into without swapping anything out."""
    try:
        with open("/proc/meminfo") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20, 1)
    except (OSError, StopIteration):
        return None


def _damon_pageout() -> bool | None:
    """Whether a running DAMON scheme pages out idle memory, the page cache included (None: no DAMON interface).

    Where it does (e.g. memory-overcommitted VMs), a shard's pages leave the page cache seconds after they were
    read, so most gathers read from the disk even when the shard would fit in memory.
    """
    root = "/sys/kernel/mm/damon/admin/kdamonds"
    if not os.path.isdir(root):
        return None
    for action in glob.glob(os.path.join(root, "*", "contexts", "*", "schemes", "*", "action")):
        kdamond = action.split(os.sep + "contexts" + os.sep)[0]
        try:
            with open(action) as f, open(os.path.join(kdamond, "state")) as g:
                if f.read().strip() == "pageout" and g.read().strip() == "on":
                    return True
        except OSError:
            continue
    return False


def _gather_epoch(cache: TeacherFeatureCache, batches: list[torch.Tensor], device: torch.device) -> list[float]:
    times = []
    for rows in batches:
        t0 = time.perf_counter()
        out = cache.gather(rows, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        del out
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in times)
    return {
        "batches": len(ms),
        "seconds": round(sum(times), 3),
        "ms_per_batch_median": round(statistics.median(ms), 4),
        "ms_per_batch_mean": round(statistics.fmean(ms), 4),
        "ms_per_batch_p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
    }


def _student_step_seconds(steps: int) -> float:
    from monai_rd.networks import StudentClassifier

    torch.manual_seed(0)
    net = StudentClassifier("resnet18", num_classes=14, in_channels=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(32, 1, 64, 64), torch.randint(0, 2, (32, 14)).float()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (and writes it with ``--json``)."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = start_device(args)
    machine, psi_start = machine_info(device), cpu_pressure()
    machine["mem_available_gib_at_start"] = _mem_available_gib()
    machine["damon_pageout"] = _damon_pageout()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_cache_memory_")
    cache_dir = os.path.join(work, "cache")
    memory = MemorySampler().start()
    result: dict[str, Any] = result_header("bench_cache_memory.py", argv, machine)
    try:
        memory.enter("datalist")
        t0 = time.perf_counter()
        items = _make_datalist(os.path.join(work, "images"), args.items)
        print(f"[bench] {args.items} files written in {time.perf_counter() - t0:.1f} s", flush=True)

        teacher = SyntheticTeacher(args.channels, args.spatial)

        def new_cache() -> TeacherFeatureCache:
            return TeacherFeatureCache(
                teacher, SyntheticImage(), cache_dir=cache_dir, dtype=torch.float16, batch_size=args.build_batch
            )

        memory.enter("build")
        t0 = time.perf_counter()
        cache = new_cache().build(items)
        build_s = time.perf_counter() - t0
        (features_file,) = [os.path.join(cache_dir, f) for f in os.listdir(cache_dir) if f.endswith(".features.npy")]
        print(f"[bench] built in {build_s:.1f} s: {cache.nbytes / 2**30:.2f} GiB in {features_file}", flush=True)

        memory.enter("rebuild")
        calls = teacher.calls
        t0 = time.perf_counter()
        cache = new_cache().build(items)
        rebuild_s = time.perf_counter() - t0
        if teacher.calls != calls or cache.misses:
            raise RuntimeError("the second build ran the teacher: the finished shard was not reused.")
        print(f"[bench] rebuilt (read) in {rebuild_s:.1f} s, teacher not called", flush=True)

        # the rows a shuffled DataLoader would hand the trainer (index() runs once per item, in the dataset)
        rows = torch.tensor([cache.index(it["image"]) for it in items])
        gen = torch.Generator().manual_seed(0)
        epochs, order = {}, torch.randperm(len(items), generator=gen)
        batches = [rows[order[i : i + args.batch_size]] for i in range(0, len(items), args.batch_size)]
        ids = torch.arange(len(items), dtype=torch.float32)
        for b in range(min(args.check_batches, len(batches))):
            want = teacher(ids[order[b * args.batch_size : (b + 1) * args.batch_size]][:, None]).half().float()
            if not torch.equal(cache.gather(batches[b], "cpu"), want):
                raise RuntimeError(f"batch {b}: gathered features differ from the teacher's for its images.")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            cuda_base = torch.cuda.memory_allocated(device)
        for name in ("epoch_1", "epoch_2"):
            memory.enter(name)
            epochs[name] = _summary(_gather_epoch(cache, batches, device))
            e = epochs[name]
            print(f"[bench] {name}: {e['seconds']:.1f} s, {e['ms_per_batch_median']:.3f} ms/batch", flush=True)
            batches = [rows[b] for b in torch.randperm(len(items), generator=gen).split(args.batch_size)]

        worker_copy = pickle.loads(pickle.dumps(cache))
        pickled_bytes = len(pickle.dumps(cache))
        del cache  # unmapped: mapped pages cannot be evicted
        memory.enter("cold")
        if _evict(features_file):
            epochs["cold"] = _summary(_gather_epoch(worker_copy, batches[: args.cold_batches], device))
            print(f"[bench] cold: {epochs['cold']['ms_per_batch_median']:.3f} ms/batch (median)", flush=True)

        memory.enter("in_memory_reference")
        n_ref = min(args.reference_items, len(items))
        reference = TeacherFeatureCache(teacher, SyntheticImage(), dtype=torch.float16, batch_size=args.build_batch)
        reference.build(items[:n_ref])
        gen = torch.Generator().manual_seed(1)
        ref_batches = [torch.randint(0, n_ref, (len(b),), generator=gen) for b in batches]
        ref = _summary(_gather_epoch(reference, ref_batches, device))
        del reference
        print(f"[bench] in-memory reference: {ref['ms_per_batch_median']:.3f} ms/batch", flush=True)

        memory.enter("student")
        student_s = _student_step_seconds(args.student_steps)
        print(f"[bench] student step {student_s * 1e3:.0f} ms", flush=True)
        mem = memory.stop()

        row_bytes = args.channels * args.spatial**2 * 2
        # the reference holds its rows in memory by design, and the student phase is the student's own memory
        peak_anon = max(v["peak_RssAnon_mb"] for p, v in mem.items() if p not in ("in_memory_reference", "student"))
        result.update(
            {
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "workdir", "keep")},
                "features": {
                    "rows": args.items,
                    "row_shape": [args.channels, args.spatial, args.spatial],
                    "dtype": "float16",
                    "row_bytes": row_bytes,
                    "shard_gib": round(worker_copy.nbytes / 2**30, 3),
                    "rd_chestxray_scale_gib": round(112_120 * 2048 * 49 * 2 / 2**30, 2),
                },
                "build_seconds": round(build_s, 2),
                "rebuild_seconds": round(rebuild_s, 2),
                "rebuild_ran_teacher": False,
                "pickled_cache_bytes": pickled_bytes,
                "gathers": epochs,
                "in_memory_reference": {**ref, "items": n_ref},
                "student_step_ms": round(student_s * 1e3, 2),
                # what a cached RD step adds to the student's for reading its features (Phi and the loss aside,
                # see bench_speed.py): (student step + gather) / student step, per median batch
                "step_ratio_with_gather": {
                    name: round(1 + e["ms_per_batch_median"] / (student_s * 1e3), 4) for name, e in epochs.items()
                },
                "gather_over_in_memory_median": {
                    name: round(e["ms_per_batch_median"] / ref["ms_per_batch_median"], 2) for name, e in epochs.items()
                },
                "memory_mb": mem,
                "peak_anon_mb_excluding_student": peak_anon,
                "goal": {
                    "peak_anon_mb_below": GOAL_ANON_MB,
                    "met": peak_anon < GOAL_ANON_MB,
                    "note": "RssAnon: heap, tensors and Python objects of the whole process (torch included); the "
                    "shard's pages are RssFile (page cache, reclaimable). Excluded: the in-memory reference (its rows "
                    "are in memory by design) and the student phase (the student's own memory, the same without a "
                    "cache).",
                },
            }
        )
        if device.type == "cuda":
            result["cuda_peak_gather_mb"] = round((torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20, 2)
        psi_end, wall = cpu_pressure(), time.perf_counter() - t_start
        if psi_start and psi_end:  # share of the run in which some runnable task (ours or another's) waited for a CPU
            machine["cpu_pressure_some_during_run"] = round((psi_end["total"] - psi_start["total"]) / 1e6 / wall, 3)
        if hasattr(os, "getloadavg"):
            machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        machine["mem_available_gib_at_end"] = _mem_available_gib()
        result["total_seconds"] = round(wall, 1)
    finally:
        if not args.keep and not args.workdir:
            t0 = time.perf_counter()
            shutil.rmtree(work, ignore_errors=True)
            print(f"[bench] removed {work} in {time.perf_counter() - t0:.1f} s", flush=True)
    print(
        f"[bench] peak RssAnon {peak_anon:.0f} MB (goal < {GOAL_ANON_MB}); (student step + gather) / student step: "
        f"{result['step_ratio_with_gather']}; total {result['total_seconds']:.0f} s",
        flush=True,
    )
    if args.json:
        write_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
