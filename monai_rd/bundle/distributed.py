"""One bundle run over several processes (``torchrun``): the process group, rank-0 work, and the rest waiting.

``configs/multi_gpu_train.json`` (generated beside every bundle's ``train.json``) makes a run data-parallel:
``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"``.
Every helper here is a plain call in a single process (no process group), so the same ``train.json`` entries
serve both: :func:`on_rank0` runs a function on rank 0 and hands its result (or its error) to every rank,
:func:`build_cache_once` computes the teacher's features once for all ranks, :func:`for_this_rank` keeps the
handlers that write files or logs on rank 0 only.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from monai_rd.errors import MonaiRDError, OptionError

__all__ = [
    "DistributedRunError",
    "build_cache_once",
    "for_this_rank",
    "init_process_group",
    "is_distributed",
    "on_rank0",
    "rank",
    "run_fingerprint",
    "shard_size",
    "shutdown",
    "world_size",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedRunError(MonaiRDError, RuntimeError):
    """A multi-process run cannot start or continue (not launched by torchrun, or rank 0 failed)."""


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group; 0 without one (a single-process run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_process_group(timeout_s: float = 1800.0, backend: str | None = None) -> torch.device:
    """Join the run's process group (from torchrun's environment) and return this process's device.

    Args:
        timeout_s: seconds a collective (a gradient all-reduce, a barrier) waits for the other ranks before the
            run stops with an error naming the timeout: a rank that died or hangs ends the job instead of
            leaving the others waiting forever (torchrun then stops every rank and names the failed one). With
            NCCL the timeout is enforced through ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (on by default in PyTorch 2).
        backend: ``nccl`` (default with CUDA) or ``gloo`` (default on CPU).

    Returns:
        ``cuda:<LOCAL_RANK>`` (made the current CUDA device) with CUDA, else ``cpu``.

    Raises:
        DistributedRunError: the process was not started by ``torchrun`` (its environment variables are missing).
        OptionError: ``timeout_s`` is not a positive number.
    """
    missing = [v for v in _LAUNCH_VARS if v not in os.environ]
    if missing:
        raise DistributedRunError(
            f"configs/multi_gpu_train.json needs the environment torchrun sets ({', '.join(missing)} missing): run "
            "`torchrun --nproc_per_node=<GPUs> -m monai.bundle run --config_file \"['configs/train.json',"
            "'configs/multi_gpu_train.json']\"`, or drop multi_gpu_train.json to train in one process."
        )
    try:
        timeout = float(timeout_s)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise OptionError(f"--dist_timeout must be a positive number of seconds, got {timeout_s!r}.")
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)  # NCCL collectives and ignite's metric reduction use the current device
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend or ("nccl" if cuda else "gloo"), timeout=datetime.timedelta(seconds=timeout)
        )
    logger.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, dist.get_backend())
    if dist.get_rank() > 0:
        logging.disable(logging.INFO)  # one log per run: the other ranks print warnings and errors only
    return device


def shutdown() -> None:
    """Leave the process group (every rank waits for the others first); nothing without one.

    Unreferenced DDP wrappers (see :meth:`monai_rd.engines.RDTrainer.run`) are collected first: one still holding
    the group at interpreter exit can make gloo abort the process after a finished run.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def on_rank0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 only; every rank returns its result, or raises its error.

    The other ranks wait (a broadcast is also a barrier), so files rank 0 moves or writes are in place when
    they go on. Without a process group it is a plain call.

    Args:
        fn: the function (e.g. :func:`~monai_rd.bundle.prepare_run_folder`); its result must pickle.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        Rank 0's result, on every rank.

    Raises:
        Exception: the error ``fn`` raised on rank 0, re-raised on every rank (a :class:`DistributedRunError`
            naming it when the error itself cannot be sent).
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as e:  # every rank must stop with rank 0's error, not wait for it
            box[0] = ("error", e)
    try:
        dist.broadcast_object_list(box, src=0)
    except Exception as e:
        if dist.get_rank() == 0 and box[0] is not None and box[0][0] == "error":
            raise box[0][1] from e
        raise
    status, value = box[0]
    if status == "error":
        if dist.get_rank() == 0:
            raise value
        raise value if isinstance(value, Exception) else DistributedRunError(f"rank 0 failed: {value}")
    return value


def for_this_rank(handlers: Iterable[Any], rank0_only: Sequence[type] | None = None) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; on the others, none of those that write files or logs.

    Checkpoint savers, metric and curve writers, prediction writers and log handlers run on rank 0 only; every
    other handler (LR and loss-weight schedules, validation, metrics) runs on every rank, so the ranks keep
    the same schedule and take part in every metric reduction.

    Args:
        handlers: a bundle's handler list (objects, ``None`` entries skipped).
        rank0_only: the handler types that run on rank 0 only (default: see above).

    Returns:
        The handlers to attach on this rank.
    """
    handlers = [h for h in handlers if h is not None]
    if rank() == 0:
        return handlers
    if rank0_only is None:
        from monai.handlers import CheckpointSaver, StatsHandler

        from monai_rd.handlers import MetricsJSONWriter, PredictionsCSVSaver, TrainingCurvePlotter

        rank0_only = (CheckpointSaver, StatsHandler, MetricsJSONWriter, PredictionsCSVSaver, TrainingCurvePlotter)
    return [h for h in handlers if not isinstance(h, tuple(rank0_only))]


def shard_size(num_items: int) -> int:
    """Items per rank under ``DistributedSampler(even_divisible=True)``: ``ceil(num_items / world_size)``."""
    n = world_size()
    return -(-int(num_items) // n)


def run_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A run's fingerprint with the number of processes (only when more than one, so single-process
    checkpoints keep their fingerprint): a run resumed with another world size is refused, since its data
    order and iterations per epoch differ."""
    out = dict(fingerprint)
    if world_size() > 1:
        out["world_size"] = world_size()
    return out


def build_cache_once(cache: Any, data: Sequence[Mapping]) -> Any:
    """Build a :class:`~monai_rd.data.TeacherFeatureCache` with the teacher run over each image once in all.

    Rank 0 builds it. With ``cache_dir`` the others then build from the same folder, which finds every item in
    rank 0's shard and runs no teacher (the usual key checks: path, content hash, teacher, transforms); a
    ``cache_dir`` that other machines do not share makes their ranks compute the features themselves, with a
    warning. In memory, rank 0 sends its rows (a pickled copy) and the others adopt them.

    Args:
        cache: the bundle's teacher-feature cache.
        data: the training datalist.

    Returns:
        ``cache``, built.

    Raises:
        Exception: rank 0's build error, on every rank.
    """
    if not is_distributed():
        return cache.build(data)
    if cache.cache_dir:
        on_rank0(cache.build, data)
        misses = cache.misses
        cache.build(data)
        if dist.get_rank() != 0 and cache.misses > misses:
            logger.warning(
                "rank %d: the teacher-feature cache in %s did not hold rank 0's build, so this rank ran the teacher "
                "itself; on several machines put --cache_dir on storage every machine sees, or leave it unset (rank 0 "
                "then sends its in-memory cache).", dist.get_rank(), cache.cache_dir,
            )
        return cache
    built = on_rank0(cache.build, data)
    if dist.get_rank() != 0:
        cache.adopt(built)
    return cache
