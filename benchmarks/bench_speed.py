#!/usr/bin/env python
"""Training cost of Reprogramming Distillation versus the student alone, and deployed inference latency.

In one process and one run, on the same data, batch size, DataLoader settings and number of iterations,
this times one training epoch of:

* ``student_alone`` (a): the bundle with ``method=student``: the student trained alone (CE only);
* ``rd_live`` (b): RD with the teacher run on every batch (``cache_teacher=false``);
* ``rd_cached`` (c): RD with the teacher-feature cache (the bundle's default); the cache's one-off build
  time is reported separately;
* with ``--drd``, also ``drd_live`` (d) and ``drd_cached`` (e): Deep RD (``method=drd``) with the teacher's stage
  maps computed on every batch, and read from the stage-map cache.

Each mode is the bundle's own training workflow (``monai.bundle.ConfigWorkflow`` on its ``train.json``):
``initialize`` runs as in a bundle run (options, seed, data check, run folder, the method's ``prepare``: the
teacher and the feature cache), then ``train#trainer`` is the method's trainer (``DistillationTrainer`` for the
student alone, ``RDTrainer`` or ``DenseRDTrainer`` for RD), built with everything it holds: student, Φ, teacher,
loss and its α/β schedule, optimizer, datalist, train preprocessing, DataLoader and feature cache. So the benchmark
measures what users get; only the trainer's handlers (validation, checkpointing, logging, plots, the LR schedule)
and the teacher-branch validation cache are dropped, as they are not part of a training step. Modes are
interleaved (the live teacher's epochs first, then a c, c a, ...) after a warm-up round, and the median epoch of
each mode is reported, so drift on a shared machine affects all modes alike.

The same holds for any RD bundle, 2D or 3D, classification (``RDTrainer``) or segmentation (``DenseRDTrainer``):
the modes only set ``method`` and ``cache_teacher``, and forward hooks count the teacher's and Φ's calls in the
timed epochs, so the run stops (:func:`check_modes`) if a mode did not run what it is named for.

Then the deployed student (eager and TorchScript) and the teacher are timed at batch 1 and 32 on random inputs of
the shape of one preprocessed training image (the student through the bundle's ``inferer`` when it has one, e.g.
a segmentation bundle's sliding window), and their parameter counts are reported (the paper's Table 6).

Usage (from the repository root)::

    python benchmarks/bench_speed.py --json benchmarks/results/cpu-2core.json
    python benchmarks/bench_speed.py --device cuda --json benchmarks/results/<machine>.json
    python benchmarks/bench_speed.py --override image_size=32 --override batch_size=8 --max_iters 2 --epochs 1
    python benchmarks/bench_speed.py --config_file bundles/rd_brain_segment/configs/train.json --latency_batches 1,4
    python benchmarks/bench_speed.py --drd --json benchmarks/results/drd-cpu-2core.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "bundles", "rd_demo", "configs", "train.json")
if REPO not in sys.path:  # run from a checkout without `pip install -e .`: the bundle imports monai_rd
    sys.path.insert(1, REPO)

from monai_rd.data import TeacherFeatureCache  # noqa: E402

# mode name -> bundle overrides that select it
MODES: dict[str, dict[str, Any]] = {
    "student_alone": {"method": "student"},
    "rd_live": {"method": "rd", "cache_teacher": False},
    "rd_cached": {"method": "rd", "cache_teacher": True},
}
# with --drd: Deep RD, its stage maps from the live teacher and from the stage-map cache
DRD_MODES: dict[str, dict[str, Any]] = {
    "drd_live": {"method": "drd", "cache_teacher": False},
    "drd_cached": {"method": "drd", "cache_teacher": True},
}
ALL_MODES = {**MODES, **DRD_MODES}
MODE_LABELS = {
    "student_alone": "(a) student alone",
    "rd_live": "(b) RD, live teacher",
    "rd_cached": "(c) RD, cached",
    "drd_live": "(d) DRD, live teacher",
    "drd_cached": "(e) DRD, cached",
}

__all__ = [
    "main",
    "parse_args",
    "MODES",
    "DRD_MODES",
    "EXPECTED_FORWARDS",
    "ModeRun",
    "TimedFeatureCache",
    "check_modes",
    "latency_image_shape",
    "make_workflow",
]


# --------------------------------------------------------------------------------------------- arguments


def _json_value(text: str) -> Any:
    """A JSON value, or the raw string when it is not JSON (so ``student=mobilenetv2`` works)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config_file", default=DEFAULT_CONFIG, help="bundle train.json (default: the demo bundle's)")
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, VALUE parsed as JSON (else a string); repeatable, e.g. --override image_size=32",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs of (a) and (c) (default 4)")
    ap.add_argument(
        "--live_epochs",
        type=int,
        default=1,
        help="timed epochs of (b), the live teacher (default 1: it is several times slower and only has to be\n"
        "shown slower than (c); they run on their own before the a/c rounds)",
    )
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed warm-up rounds, every mode once per round (default 1)"
    )
    ap.add_argument("--warmup_iters", type=int, default=3, help="iterations of a warm-up epoch (default 3; 0 = full)")
    ap.add_argument(
        "--max_iters", type=int, default=None, help="cap on iterations per timed epoch (default: full epoch)"
    )
    ap.add_argument(
        "--latency_batches", default="1,32", help="comma-separated batch sizes of the latency benchmark (default 1,32)"
    )
    ap.add_argument("--latency_repeats", type=int, default=10, help="timed repeats per latency measurement")
    ap.add_argument(
        "--latency_budget_s",
        type=float,
        default=4.0,
        help="stop a latency measurement early once it has taken this long (at least 3 repeats)",
    )
    ap.add_argument(
        "--drd",
        action="store_true",
        help="also time Deep RD: (d) live teacher and (e) the stage-map cache (method=drd); (e) joins the a/c rounds",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON here")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.override:
        if "=" not in item:
            ap.error(f"--override expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _json_value(value)
    args.overrides = overrides
    if args.epochs < 1 or args.warmup < 0 or not 1 <= args.live_epochs <= args.epochs:
        ap.error("--epochs must be >= 1, --warmup >= 0 and 1 <= --live_epochs <= --epochs")
    args.latency_batches = [int(b) for b in str(args.latency_batches).split(",") if b.strip()]
    return args


# ----------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_pressure() -> dict[str, float] | None:
    """Linux PSI "some" line of /proc/pressure/cpu: share of time runnable tasks waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            fields = dict(kv.split("=") for kv in f.readline().split()[1:])
        return {k: float(v) for k, v in fields.items()}
    except (OSError, ValueError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    import monai

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
        "device_name": _cpu_model(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def start_device(args: argparse.Namespace) -> torch.device:
    """Apply a benchmark's ``--threads`` and resolve its ``--device``.

    Args:
        args: parsed options with ``threads`` (0 or None: torch's default) and ``device``.

    Returns:
        The device to run on.

    Raises:
        RuntimeError: ``--device cuda`` on a machine without CUDA.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but CUDA is not available.")
    return device


def result_header(script: str, argv: Sequence[str] | None, machine: dict[str, Any]) -> dict[str, Any]:
    """The fields every benchmark result JSON starts with.

    Args:
        script: the benchmark's file name in ``benchmarks/`` (e.g. ``"bench_speed.py"``).
        argv: the arguments ``main`` got (None: the process' own).
        machine: :func:`machine_info` (later additions show in the result, it is the same dict).

    Returns:
        ``{"benchmark", "command", "date_utc", "machine"}``.
    """
    return {
        "benchmark": f"benchmarks/{script}",
        "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
    }


def write_result(result: dict[str, Any], path: str) -> None:
    """Write a benchmark result as indented JSON (values JSON lacks as strings), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
        f.write("\n")
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ memory


def _rss_reader() -> Callable[[], int]:
    try:
        import psutil

        proc = psutil.Process()
        return lambda: int(proc.memory_info().rss)
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return read


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so that an epoch's RSS growth is not hidden by the last one's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the level at ``start()``: CUDA allocator bytes, or CPU RSS sampled by a thread."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.read_rss = _rss_reader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.base = 0
        self.peak = 0

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return (
                "CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() at the epoch's start (peak stats "
                "reset per epoch): the training step's working set above the models and optimizer state already "
                "resident; max over the mode's timed epochs"
            )
        src = "psutil RSS" if "psutil" in sys.modules else "/proc/self/statm RSS"
        return (
            f"CPU: peak process RSS ({src}, sampled every {self.interval_s * 1e3:.0f} ms by a background thread) minus "
            "the RSS at the epoch's start (after gc.collect and glibc malloc_trim); max over the mode's timed epochs. "
            "It counts everything the epoch allocates (activations, gradients, batches, allocator growth) above "
            "what is already resident"
        )

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.read_rss())

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        self.base = self.peak = self.read_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Bytes of peak growth since ``start()``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.base)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.read_rss())
        return int(self.peak - self.base)


# ------------------------------------------------------------------------------------------------- setup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first(*values: Any) -> Any:
    """The first of ``values`` that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)


def make_workflow(
    config_file: str, overrides: Mapping[str, Any], mode: Mapping[str, Any], device: torch.device, run_dir: str
):
    """The bundle's training workflow for one mode (not initialised yet), set up for timing training steps.

    Applied in this order over the bundle's ``train.json``: the device (and ``amp`` off unless it is CUDA: the
    bundle's ``amp`` is "CUDA available"), the user's overrides, the mode's. Then what is not part of a training
    step is dropped: the trainer's handlers (validation, checkpointing, logging, plots, the LR schedule) and the
    validation split's teacher-feature cache (``teacher_branch_metrics``, read by validation only); and the
    bundle's ``feature_cache`` factory makes a :class:`TimedFeatureCache`, so the cache's one-off build is timed.

    Args:
        config_file: the bundle's ``train.json``.
        overrides: the user's ``--override`` values (bundle keys, e.g. ``image_size``).
        mode: the mode's overrides (:data:`MODES`).
        device: the device to train on.
        run_dir: a scratch folder for the run's ``ckpt_dir`` and ``output_dir`` (the bundle's ``initialize``
            checks the run folder and writes the model's spec there).

    Returns:
        A ``monai.bundle.ConfigWorkflow``; :class:`ModeRun` initialises it.
    """
    from monai.bundle import ConfigWorkflow

    settings: dict[str, Any] = {
        "bundle_root": os.path.dirname(os.path.dirname(os.path.abspath(config_file))),
        "ckpt_dir": os.path.join(run_dir, "models"),
        "output_dir": os.path.join(run_dir, "eval"),
        "device": f"$torch.device({str(device)!r})",
    }
    if device.type != "cuda":
        settings["amp"] = False  # autocast is CUDA-only in the trainers
    settings.update(overrides)
    settings.update(mode)
    settings["train#handlers"] = []
    workflow = ConfigWorkflow(config_file=config_file, workflow_type="train", **settings)
    workflow.parser["feature_cache#_target_"] = TimedFeatureCache
    if "teacher_branch_metrics" in workflow.parser:
        workflow.parser["teacher_branch_metrics"] = False
    if "train#dataset#progress" not in workflow.parser:
        workflow.parser["train#dataset#progress"] = False
    return workflow


class TimedFeatureCache(TeacherFeatureCache):
    """The bundle's :class:`~monai_rd.data.TeacherFeatureCache`, unchanged but for a clock around :meth:`build`.

    :func:`make_workflow` puts it in the bundle's ``feature_cache`` factory, so the cache the method's ``prepare``
    builds reports its one-off build time apart from the training epochs.

    Attributes:
        build_seconds: wall time of every :meth:`build` so far (CUDA synchronised before and after).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.build_seconds = 0.0

    def build(self, data: Sequence[Mapping]) -> TimedFeatureCache:  # noqa: D102 (TeacherFeatureCache's)
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            return super().build(data)
        finally:
            _sync(self.device)
            self.build_seconds += time.perf_counter() - t0


class ModeRun:
    """One mode's trainer built by the bundle's own workflow, run one epoch at a time.

    ``workflow.initialize()`` runs the bundle's ``initialize`` as a bundle run does (the method's ``prepare``
    builds the teacher and the feature cache), then ``train#trainer`` is built: the method's trainer with the
    student (``network``), the method's parts and the training loader.

    Forward hooks count the calls of the teacher and Φ during the timed epochs, so the result shows what each mode
    actually ran (:func:`check_modes`): a mode whose bundle overrides did not take effect (e.g. a recipe in which
    ``method=student`` still builds the teacher, or ``cache_teacher=true`` still runs it on every batch) would
    otherwise be timed under the wrong name.

    Args:
        name: the mode's key in :data:`MODES`.
        workflow: the bundle's workflow for this mode (:func:`make_workflow`), not initialised yet.
        device: the device it trains on.
        max_iters: cap on iterations per timed epoch (None: the full DataLoader).

    Raises:
        ValueError: the training DataLoader is empty.
    """

    def __init__(self, name: str, workflow, device: torch.device, max_iters: int | None) -> None:
        self.name = name
        self.workflow = workflow
        self.parser = workflow.parser
        self.device = device
        workflow.initialize()
        self.options = self.parser.get_parsed_content("options")
        self.method = self.parser.get_parsed_content("method_def")
        self.trainer = self.parser.get_parsed_content("train#trainer")
        # what the mode built, from the method and its trainer alike (a teacher either holds counts)
        held = {
            "teacher": (self.trainer.features.teacher, self.method.teacher),
            "reprogrammer": (getattr(self.trainer, "reprogrammer", None), getattr(self.method, "reprogrammer", None)),
        }
        # DRD's Φ is one projector per distilled stage: each counts once per call
        projectors = getattr(self.method, "projectors", None)
        self.num_projectors = len(projectors) if projectors is not None else 0
        if projectors is not None:
            held["reprogrammer"] = (*held["reprogrammer"], *projectors)
        self.teacher, self.reprogrammer = _first(*held["teacher"]), _first(*held["reprogrammer"])
        self.feature_cache = _first(self.trainer.features.feature_cache, self.method.cache)
        n = len(self.trainer.data_loader)
        self.iters = min(n, max_iters) if max_iters else n
        if self.iters < 1:
            raise ValueError(f"mode {name}: the training DataLoader is empty (batch size larger than the split?).")
        self.seconds: list[float] = []
        self.peak_bytes: list[int] = []
        self._calls = {"teacher": 0, "reprogrammer": 0}
        self.timed_calls = {"teacher": 0, "reprogrammer": 0}
        self.timed_iters = 0
        self._hooks = []
        for role, modules in held.items():
            for module in {id(m): m for m in modules if m is not None}.values():  # each module once
                self._hooks.append(module.register_forward_hook(self._counter(role)))

    @property
    def cache_build_seconds(self) -> float | None:
        """Seconds the method's ``prepare`` took to build the training feature cache (None: the mode has none)."""
        return getattr(self.method.cache, "build_seconds", None)

    def _counter(self, role: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            self._calls[role] += 1

        return count

    def remove_hooks(self) -> None:
        """Detach the call counters (before the latency benchmark reuses the same teacher)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def components(self) -> dict[str, Any]:
        """What this mode built and what it ran per timed iteration (see :func:`check_modes`).

        ``has_teacher``, ``has_reprogrammer`` and ``has_feature_cache`` are true when the method or its trainer
        holds one.
        """
        per_iter = {k: v / self.timed_iters if self.timed_iters else None for k, v in self.timed_calls.items()}
        return {
            "trainer": type(self.trainer).__name__,
            "has_teacher": self.teacher is not None,
            "has_reprogrammer": self.reprogrammer is not None,
            "has_feature_cache": self.feature_cache is not None,
            "projectors": self.num_projectors,
            "timed_iterations": self.timed_iters,
            "teacher_forwards": self.timed_calls["teacher"],
            "reprogrammer_forwards": self.timed_calls["reprogrammer"],
            "teacher_forwards_per_iteration": per_iter["teacher"],
            "reprogrammer_forwards_per_iteration": per_iter["reprogrammer"],
        }

    def run_epoch(
        self, memory: PeakMemory | None = None, iters: int | None = None, timed: bool = False
    ) -> tuple[float, int | None]:
        """One epoch of ``iters`` iterations (default: the timed length); returns (seconds, peak bytes or None)."""
        from ignite.engine import Engine

        calls_before = dict(self._calls)
        if memory is not None:
            memory.start()
        _sync(self.device)
        t0 = time.perf_counter()
        # a fresh one-epoch run each call; Engine.run directly (not Workflow.run) so that epoch_length applies
        self.trainer.state.max_epochs = None
        Engine.run(self.trainer, data=self.trainer.data_loader, max_epochs=1, epoch_length=iters or self.iters)
        _sync(self.device)
        dt = time.perf_counter() - t0
        peak = memory.stop() if memory is not None else None
        if timed:
            self.timed_iters += iters or self.iters
            for role, n in self._calls.items():
                self.timed_calls[role] += n - calls_before[role]
        return dt, peak


# per mode: (teacher forwards, Φ forwards) per timed iteration that the mode's name promises; for DRD, Φ is each
# projector once (the count is multiplied by the mode's number of projectors)
EXPECTED_FORWARDS: dict[str, tuple[int, int]] = {
    "student_alone": (0, 0),
    "rd_live": (1, 1),
    "rd_cached": (0, 1),
    "drd_live": (1, 1),
    "drd_cached": (0, 1),
}


def check_modes(runs: dict[str, ModeRun]) -> dict[str, dict[str, Any]]:
    """Check that every mode ran what its name says, from the calls counted during its timed epochs.

    (a) the student alone: no teacher, no Φ and no feature cache built (by the method or its trainer), neither
    called; (b) RD live: the teacher and Φ once per iteration, no feature cache; (c) RD cached: Φ once per iteration,
    the teacher never (its features come from the cache); (d) and (e), DRD live and cached, likewise, with each
    stage projector once per iteration.

    Args:
        runs: the modes after their timed epochs.

    Returns:
        ``{mode: ModeRun.components()}``, for the result JSON.

    Raises:
        RuntimeError: a mode did not run what its name says (e.g. the bundle's overrides for it had no effect);
            the message names the mode, the counts and the ``--config_file``'s keys involved.
    """
    report = {name: run.components() for name, run in runs.items()}
    problems = []
    for name in report:
        teacher, phi = EXPECTED_FORWARDS[name]
        c = report[name]
        got = (c["teacher_forwards"], c["reprogrammer_forwards"])
        phi *= max(c.get("projectors", 0), 1)
        want = (teacher * c["timed_iterations"], phi * c["timed_iterations"])
        if got != want:
            problems.append(f"{name}: {got[0]} teacher and {got[1]} Φ forwards in {c['timed_iterations']} timed "
                            f"iterations, expected {want[0]} and {want[1]}")
    alone = report["student_alone"]
    if alone["has_teacher"] or alone["has_reprogrammer"] or alone["has_feature_cache"]:
        problems.append(f"student_alone: the mode built a teacher, Φ or feature cache with {MODES['student_alone']}")
    if report["rd_live"]["has_feature_cache"] or not report["rd_cached"]["has_feature_cache"]:
        problems.append("rd_live must train without the feature cache (cache_teacher=false) and rd_cached with it")
    if "drd_live" in report and (
        report["drd_live"]["has_feature_cache"] or not report["drd_cached"]["has_feature_cache"]
    ):
        problems.append(
            "drd_live must train without the stage-map cache (cache_teacher=false) and drd_cached with it"
        )
    for name in DRD_MODES:
        if name in report and not report[name]["projectors"]:
            problems.append(f"{name}: the mode built no DRD stage projectors with {DRD_MODES[name]}")
    if problems:
        overrides = {name: ALL_MODES[name] for name in report}
        raise RuntimeError(
            "the benchmark's modes did not run what they are named for: " + "; ".join(problems)
            + f". The modes set these bundle keys: {overrides}; check that the bundle's train.json reads them "
            "(method selects the training method, whose trainer and prepare build the teacher, Φ and the cache; "
            "cache_teacher selects the feature cache)."
        )
    return report


# --------------------------------------------------------------------------------------------- inference


def _latency_ms(fn: Callable[[], Any], device: torch.device, repeats: int, budget_s: float, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        start = time.perf_counter()
        for i in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() - start > budget_s:
                break
    return statistics.median(times) * 1e3


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def latency_image_shape(dataset) -> tuple[int, ...]:
    """Shape (C, *spatial) of one preprocessed training image: what the deployed student is timed on.

    Taken from the data rather than from config keys, so it holds for every recipe: ``image_size`` resized 2D or
    3D images for classification, whole (padded) volumes for segmentation, whatever ``spatial_dims`` is.

    Args:
        dataset: the training dataset of a mode's trainer; item 0 is a dict with ``image`` (C, *spatial), or a
            list of such dicts (a transform that returns several samples).

    Returns:
        ``(C, *spatial)``.

    Raises:
        ValueError: the item has no ``image`` of at least 2 dimensions.
    """
    item = dataset[0]
    if isinstance(item, (list, tuple)):
        item = item[0]
    image = item.get("image") if isinstance(item, dict) else None
    if image is None or len(image.shape) < 2:
        raise ValueError(
            "the latency benchmark needs the training dataset's items to hold an 'image' (C, *spatial); got "
            f"{type(item).__name__} with keys {list(item) if isinstance(item, dict) else None}."
        )
    return tuple(int(d) for d in image.shape)


def inference_benchmark(
    run: ModeRun,
    device: torch.device,
    batches: Sequence[int],
    repeats: int,
    budget_s: float,
    image_shape: Sequence[int],
) -> tuple[dict, dict]:
    """Latency of the deployed student (eager, TorchScript) and the teacher; parameter counts.

    The student runs through the bundle's ``inferer`` when its config defines one (e.g. a segmentation bundle's
    ``SlidingWindowInferer`` at ``roi_size``: how it is validated and deployed), else it is called on the batch.
    The teacher is called on the same batch (it resizes to its own input size), as the live RD trainer calls it.

    Args:
        run: the rd_cached mode after its epochs (its trainer holds the student, Φ and the teacher).
        device: where to run.
        batches: batch sizes to time.
        repeats: timed calls per measurement (median reported).
        budget_s: stop a measurement after this long once it has 3 calls.
        image_shape: (C, *spatial) of one image (:func:`latency_image_shape`).

    Returns:
        ``(inference, params)`` dicts for the result JSON.
    """
    network = run.trainer.network.eval()
    teacher = run.teacher.to(device).eval()
    phi = run.reprogrammer.eval()
    inferer = run.parser.get_parsed_content("inferer") if "inferer" in run.parser else None
    shape = tuple(int(d) for d in image_shape)

    scripted = torch.jit.script(network)
    torch.manual_seed(0)
    x_check = torch.rand(4, *shape, device=device)
    with torch.no_grad():
        ref = network(x_check)
        got = scripted(x_check)
    max_diff = float((ref - got).abs().max())
    matches = bool(torch.allclose(ref, got, rtol=1e-4, atol=1e-5))

    def deployed(model: torch.nn.Module, x: torch.Tensor, direct: bool = False) -> Callable[[], Any]:
        """``model`` on ``x`` through the bundle's inferer (when it has one and not ``direct``)."""
        return (lambda: model(x)) if direct or inferer is None else (lambda: inferer(x, model))

    latency: dict[str, dict[str, float]] = {"student_eager": {}, "student_torchscript": {}, "teacher": {}}
    for batch in batches:
        x = torch.rand(batch, *shape, device=device)
        latency["student_eager"][str(batch)] = _latency_ms(deployed(network, x), device, repeats, budget_s)
        latency["student_torchscript"][str(batch)] = _latency_ms(deployed(scripted, x), device, repeats, budget_s)
        latency["teacher"][str(batch)] = _latency_ms(deployed(teacher, x, direct=True), device, repeats, budget_s)
    latency["teacher_over_student"] = {
        b: latency["teacher"][b] / latency["student_eager"][b] for b in latency["student_eager"]
    }

    inference = {
        "input": f"(B, {', '.join(map(str, shape))}) random images in [0, 1], the shape of one preprocessed training "
        "image; the teacher resizes to its own input size",
        "input_shape": list(shape),
        "student_inferer": type(inferer).__name__ if inferer is not None else "direct call",
        "unit": "ms per batch, median",
        "latency_ms": latency,
        "torchscript_max_abs_diff": max_diff,
        "torchscript_matches_eager": matches,
    }
    n_student, n_head = _n_params(network), _n_params(network.head)
    n_teacher, n_phi = _n_params(teacher), _n_params(phi)
    params = {
        "student_with_head": n_student,
        "student_backbone": n_student - n_head,
        "head": n_head,
        "reprogrammer": n_phi,
        "teacher": n_teacher,
        "teacher_over_student": n_teacher / n_student,
        "student_name": getattr(network, "backbone_name", type(network).__name__),
        "teacher_name": getattr(teacher, "name", type(teacher).__name__),
    }
    return inference, params


# ------------------------------------------------------------------------------------------------ report


def public_name(cls: type) -> str:
    """``cls``'s dotted name as the nearest package exporting it spells it (``monai_rd.engines.RDTrainer``, not
    ``monai_rd.engines.rd_trainer.RDTrainer``); its module's name when no package exports it."""
    parts = cls.__module__.split(".")
    for end in range(len(parts) - 1, 0, -1):
        package = sys.modules.get(".".join(parts[:end]))
        if package is not None and getattr(package, cls.__name__, None) is cls:
            return f"{package.__name__}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _config_summary(run: ModeRun, config_file: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What the rd_cached mode trained with: the options as checked (``@options``), the components' configs, Φ."""
    parser, options, phi = run.parser, run.options, run.reprogrammer

    def get(key: str) -> Any:
        return parser.get(key) if key in parser else None

    def option(name: str) -> Any:
        value = getattr(options, name, None)  # None: the recipe has no such option (image_size in segmentation)
        return list(value) if isinstance(value, tuple) else value

    width = None
    proj = getattr(phi, "proj", None)
    if proj is not None and len(proj) and hasattr(proj[0], "out_channels"):
        width = int(proj[0].out_channels)
    return {
        "config_file": os.path.relpath(os.path.abspath(config_file), REPO),
        "overrides": overrides,
        "student": option("student"),
        "spatial_dims": option("spatial_dims"),
        "image_size": option("image_size"),
        "roi_size": option("roi_size"),
        "batch_size": option("batch_size"),
        "num_workers": option("num_workers"),
        "amp": bool(options.amp),
        "grad_clip_norm": option("grad_clip_norm"),
        "teacher": get("teacher"),
        "teacher_input_size": list(getattr(run.teacher, "input_size", None) or []),
        "network_def": get("network_def"),
        # Φ has no config entry of its own: the method builds it from the options, right after the student
        "reprogrammer_def": {
            "_target_": public_name(type(phi)),
            "built_by": f"{public_name(type(run.method))}.build_reprogrammer",
            "dense": bool(getattr(phi, "dense", False)),
        },
        "reprogrammer_resolved": {
            "phi_blocks": option("phi_blocks"),
            "phi_block": option("phi_block"),
            "phi_hidden": option("phi_hidden"),
            "width": width,
            "in_channels": int(phi.in_channels),
            "out_features": int(phi.out_features),
        },
        "optimizer": get("optimizer#_target_"),
        "cache_views": option("cache_views"),
        "cache_dtype": str(options.cache_dtype),
        "trainer": public_name(type(run.trainer)),
        "inferer": get("inferer#_target_"),
    }


def _robust_stats(runs: dict[str, ModeRun], order: list[str]) -> dict[str, Any]:
    """Secondary estimates that are less sensitive to other processes stealing the CPU (which only adds time)."""
    best = {name: min(r.seconds) for name, r in runs.items()}
    # (c) and (a) run back to back in every round: the median of their per-round ratio cancels slow drift
    per_round = [c / a for a, c in zip(runs["student_alone"].seconds, runs["rd_cached"].seconds)]
    spread = {
        name: (max(r.seconds) - min(r.seconds)) / statistics.median(r.seconds) if len(r.seconds) > 1 else 0.0
        for name, r in runs.items()
    }
    return {
        "note": "ratio_live/ratio_cached use the medians; these are cross-checks for a noisy machine",
        "seconds_per_epoch_min": best,
        "ratio_live_min": best["rd_live"] / best["student_alone"],
        "ratio_cached_min": best["rd_cached"] / best["student_alone"],
        **({"ratio_drd_cached_min": best["drd_cached"] / best["student_alone"]} if "drd_cached" in best else {}),
        "ratio_cached_per_round": per_round,
        "ratio_cached_per_round_median": statistics.median(per_round),
        "relative_spread": spread,
    }


def _drd_stats(runs: dict[str, ModeRun], sec: dict[str, float]) -> dict[str, Any]:
    """DRD's ratios to the student alone (medians; cross-checks in ``robustness``) and its stage-map cache."""
    return {
        "ratio_drd_live": sec["drd_live"] / sec["student_alone"],
        "ratio_drd_cached": sec["drd_cached"] / sec["student_alone"],
        "ratio_drd_cached_over_rd_cached": sec["drd_cached"] / sec["rd_cached"],
        "drd_cache": cache_summary(runs["drd_cached"]),
        "drd_projectors": runs["drd_cached"].num_projectors,
    }


def _fmt_table(result: dict[str, Any]) -> str:
    t = result["timing"]
    lines = [
        f"Training, {t['iters_per_epoch']} iterations x batch {t['batch_size']} per epoch, "
        f"median of the timed epochs after {t['warmup_epochs']} warm-up round(s), device {result['machine']['device']}",
        f"{'mode':<24}{'s/epoch':>10}{'x alone':>10}{'peak MB':>10}   epochs (s)",
    ]
    for mode in result["seconds_per_epoch"]:
        sec = result["seconds_per_epoch"][mode]
        ratio = sec / result["seconds_per_epoch"]["student_alone"]
        mem = result["peak_memory_mb"][mode]
        eps = ", ".join(f"{s:.2f}" for s in t["epoch_seconds"][mode])
        lines.append(f"{MODE_LABELS[mode]:<24}{sec:>10.2f}{ratio:>10.3f}{mem:>10.1f}   {eps}")
    c = result["cache"]
    lines.append(
        f"ratio_live (b/a) = {result['ratio_live']:.3f}   ratio_cached (c/a) = {result['ratio_cached']:.3f}   "
        f"cache build (one-off) = {c['build_seconds']:.2f} s, {c['items']} items, {c['nbytes'] / 2**20:.1f} MB"
    )
    rb = result["robustness"]
    lines.append(
        f"cross-checks: c/a of the fastest epochs = {rb['ratio_cached_min']:.3f}, median of per-round c/a = "
        f"{rb['ratio_cached_per_round_median']:.3f}, b/a fastest = {rb['ratio_live_min']:.3f}"
    )
    if "ratio_drd_cached" in result:
        lines.append(
            f"ratio_drd_live (d/a) = {result['ratio_drd_live']:.3f}   ratio_drd_cached (e/a) = "
            f"{result['ratio_drd_cached']:.3f}   e/a of the fastest epochs = {rb['ratio_drd_cached_min']:.3f}; "
            f"stage-map cache {result['drd_cache']['nbytes'] / 2**20:.1f} MB, built in "
            f"{result['drd_cache']['build_seconds']:.2f} s"
        )
    inf = result["inference"]["latency_ms"]
    batches = list(inf["student_eager"])
    lines += ["", f"{'Inference latency (ms per batch, median)':<43}" + "".join(f"{'batch ' + b:>10}" for b in batches)]
    names = {
        "student_eager": "student + head (eager)",
        "student_torchscript": "student + head (TorchScript)",
        "teacher": "teacher (features only)",
        "teacher_over_student": "teacher / student (eager), x",
    }
    for key, label in names.items():
        lines.append(f"{label:<43}" + "".join(f"{inf[key][b]:>10.2f}" for b in batches))
    p = result["params"]
    lines += [
        f"TorchScript == eager: {result['inference']['torchscript_matches_eager']} "
        f"(max |diff| {result['inference']['torchscript_max_abs_diff']:.2e})",
        "",
        f"Parameters: student+head ({p['student_name']}) {p['student_with_head'] / 1e6:.2f} M, "
        f"teacher ({p['teacher_name']}) {p['teacher'] / 1e6:.2f} M ({p['teacher_over_student']:.2f}x), "
        f"Phi {p['reprogrammer'] / 1e6:.2f} M (training only)",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main


def build_modes(
    config_file: str,
    overrides: Mapping[str, Any],
    names: Sequence[str],
    device: torch.device,
    max_iters: int | None,
    scratch: str,
) -> dict[str, ModeRun]:
    """Build the modes ``names`` (keys of :data:`MODES` or :data:`DRD_MODES`) in order, each with the bundle's own
    workflow.

    Args:
        config_file: the bundle's ``train.json``.
        overrides: the user's overrides of bundle keys.
        names: the modes to build.
        device: the device to train on.
        max_iters: cap on iterations per timed epoch (None: full epochs).
        scratch: a folder for the modes' run folders (``<scratch>/<mode>``).

    Returns:
        ``{mode: ModeRun}``.

    Raises:
        RuntimeError: the modes differ in iterations per epoch or batch size (they would not time the same work).
    """
    runs: dict[str, ModeRun] = {}
    for name in names:
        t0 = time.perf_counter()
        workflow = make_workflow(config_file, overrides, ALL_MODES[name], device, os.path.join(scratch, name))
        runs[name] = ModeRun(name, workflow, device, max_iters)
        build = runs[name].cache_build_seconds
        extra = f", of which the feature cache's build {build:.1f} s" if build is not None else ""
        print(f"[bench] built {name} with the bundle's workflow in {time.perf_counter() - t0:.1f} s{extra}", flush=True)
    iters = {r.iters for r in runs.values()}
    batch_sizes = {r.options.batch_size for r in runs.values()}
    if len(iters) != 1 or len(batch_sizes) != 1:
        raise RuntimeError(
            f"modes differ in iterations {iters} or batch size {batch_sizes}; they must match (a datalist with "
            "unlabelled images adds them to RD's epochs only: --override unlabelled=false)."
        )
    return runs


def cache_summary(run: ModeRun) -> dict[str, Any]:
    """The training feature cache the mode's method built: its one-off build time, items, views, dtype and size."""
    cache = run.method.cache
    return {
        "build_seconds": run.cache_build_seconds,
        "items": len(cache.features),
        "views": cache.views,
        "dtype": str(cache.dtype),
        "nbytes": int(cache.nbytes),
        "mb": cache.nbytes / 2**20,
        "note": "one-off: computed once before training (and reusable across runs with cache_dir)",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (and writes it with ``--json``)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as scratch:
        result = _measure(args, argv, scratch)
    if args.json:
        write_result(result, args.json)
    return result


def _measure(args: argparse.Namespace, argv: Sequence[str] | None, scratch: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    device = start_device(args)
    machine = machine_info(device)
    psi_start = cpu_pressure()

    names = list(MODES) + (list(DRD_MODES) if args.drd else [])
    runs = build_modes(args.config_file, args.overrides, names, device, args.max_iters, scratch)

    memory = PeakMemory(device)
    order: list[str] = []
    # warm-up rounds run every mode; then the live teacher's timed epochs run on their own, before the a/c rounds,
    # because its heavy epochs disturb whatever runs right after them (allocator, caches); the a/c rounds alternate
    # (a c, c a, ...) so linear drift hits both alike
    schedule: list[tuple[bool, str]] = [(False, n) for _ in range(args.warmup) for n in names]
    schedule += [(True, "rd_live")] * args.live_epochs
    if args.drd:
        schedule += [(True, "drd_live")] * args.live_epochs
    for rnd in range(args.epochs):
        pair = ["student_alone", "rd_cached"] + (["drd_cached"] if args.drd else [])
        schedule += [(True, n) for n in (pair if rnd % 2 == 0 else pair[::-1])]
    for timed, name in schedule:
        dt, peak = runs[name].run_epoch(memory if timed else None, None if timed else args.warmup_iters, timed=timed)
        tag = "timed" if timed else "warm-up"
        print(f"[bench] {tag:>7} {name:<14} {dt:8.2f} s", flush=True)
        if timed:
            runs[name].seconds.append(dt)
            runs[name].peak_bytes.append(int(peak or 0))
            order.append(name)

    mode_check = check_modes(runs)
    for run in runs.values():
        run.remove_hooks()
    cache_info = cache_summary(runs["rd_cached"])

    sec = {name: statistics.median(r.seconds) for name, r in runs.items()}
    inference, params = inference_benchmark(
        runs["rd_cached"],
        device,
        args.latency_batches,
        args.latency_repeats,
        args.latency_budget_s,
        image_shape=latency_image_shape(runs["rd_cached"].trainer.data_loader.dataset),
    )

    if hasattr(os, "getloadavg"):
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    psi_end = cpu_pressure()
    if psi_start and psi_end:
        # share of the run's wall time in which some runnable task (ours or another's) waited for a CPU
        machine["cpu_pressure_some_during_run"] = round(
            (psi_end["total"] - psi_start["total"]) / 1e6 / (time.perf_counter() - t_start), 3
        )
    result: dict[str, Any] = {
        **result_header("bench_speed.py", argv, machine),
        "config": _config_summary(runs["rd_cached"], args.config_file, args.overrides),
        "modes": {
            name: {"label": MODE_LABELS[name], "bundle_overrides": ALL_MODES[name], "ran": mode_check[name]}
            for name in names
        },
        "timing": {
            "warmup_epochs": args.warmup,
            "warmup_iters": args.warmup_iters,
            "timed_epochs": {name: len(r.seconds) for name, r in runs.items()},
            "iters_per_epoch": runs["rd_cached"].iters,  # the same in every mode (build_modes)
            "batch_size": runs["rd_cached"].options.batch_size,
            "max_iters": args.max_iters,
            "timed_order": order,
            "epoch_seconds": {name: r.seconds for name, r in runs.items()},
            "statistic": "median over the timed epochs",
        },
        "seconds_per_epoch": sec,
        "ratio_live": sec["rd_live"] / sec["student_alone"],
        "ratio_cached": sec["rd_cached"] / sec["student_alone"],
        "robustness": _robust_stats(runs, order),
        **(_drd_stats(runs, sec) if args.drd else {}),
        "cache": cache_info,
        "peak_memory_mb": {name: max(r.peak_bytes) / 2**20 for name, r in runs.items()},
        "peak_memory_method": memory.method,
        "cache_memory_mb": cache_info["mb"],
        "inference": inference,
        "params": params,
    }
    if device.type == "cuda":
        result["cuda_max_memory_allocated_total_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["total_seconds"] = time.perf_counter() - t_start

    print()
    print(_fmt_table(result))
    print(f"\ntotal {result['total_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
