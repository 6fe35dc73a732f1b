"""One bundle run over several processes (``torchrun``): the process group, rank-0 work, and the rest waiting.

``configs/multi_gpu_train.json`` (generated beside every bundle's ``train.json``) makes a run data-parallel:
``torchrun --nproc_per_node=N -m monai.bundle run --config_file \
"['configs/train.json','configs/multi_gpu_train.json']"``.
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
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from monai_rd.errors import DistributedRunError, OptionError
from monai_rd.utils.options import epoch_length as utils_epoch_length
from monai_rd.utils.ranks import is_distributed, on_rank0, rank, run_fingerprint, world_size

__all__ = [
    "DistributedRunError",
    "epoch_length",
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
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


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
    # the option first: a typo'd --dist_timeout is named even when the launch itself is wrong too
    try:
        timeout = float(timeout_s)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise OptionError(f"--dist_timeout must be a positive number of seconds, got {timeout_s!r}.")
    missing = [v for v in _LAUNCH_VARS if v not in os.environ]
    if missing:
        raise DistributedRunError(
            f"configs/multi_gpu_train.json needs the environment torchrun sets ({', '.join(missing)} missing): run "
            "`torchrun --nproc_per_node=<GPUs> -m monai.bundle run --config_file \"['configs/train.json',"
            "'configs/multi_gpu_train.json']\"`, or drop multi_gpu_train.json to train in one process."
        )
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


def for_this_rank(handlers: Iterable[Any]) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; on the others, none of those that write files or logs.

    A handler runs on rank 0 only when its class says so (``rank0_only = True``: checkpoint savers, metric, curve
    and prediction writers), or when it is one of MONAI's writers (``CheckpointSaver``, ``StatsHandler``). Every
    other handler (LR and loss-weight schedules, validation, metrics) runs on every rank, so the ranks keep the
    same schedule and take part in every metric reduction.

    Args:
        handlers: a bundle's handler list (objects, ``None`` entries skipped).

    Returns:
        The handlers to attach on this rank.
    """
    from monai.handlers import CheckpointSaver, StatsHandler

    handlers = [h for h in handlers if h is not None]
    if rank() == 0:
        return handlers
    return [
        h for h in handlers if not (getattr(h, "rank0_only", False) or isinstance(h, (CheckpointSaver, StatsHandler)))
    ]


def shard_size(num_items: int) -> int:
    """Items per rank under ``DistributedSampler(even_divisible=True)``: ``ceil(num_items / world_size)``."""
    n = world_size()
    return -(-int(num_items) // n)


def epoch_length(num_items: int, batch_size: int) -> int:
    """Iterations per epoch on each rank: the rank's shard (:func:`shard_size`) in full batches."""
    return utils_epoch_length(shard_size(num_items), batch_size)
