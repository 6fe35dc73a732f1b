"""Which process this is in a multi-process (``torchrun``) run, and work done once, on rank 0, for every rank.

Every helper here is a plain call in a single process (no process group), so the same code serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch.distributed as dist

from monai_rd.errors import DistributedRunError

__all__ = ["is_distributed", "on_rank0", "rank", "run_fingerprint", "world_size"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group; 0 without one (a single-process run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def on_rank0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 only; every rank returns its result, or raises its error.

    The other ranks wait (a broadcast is also a barrier), so files rank 0 moves or writes are in place when
    they go on. Without a process group it is a plain call.

    Args:
        fn: the function (e.g. a run-folder check); its result must pickle.
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


def run_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A run's fingerprint with the number of processes (only when more than one, so single-process
    checkpoints keep their fingerprint): a run resumed with another world size is refused, since its data
    order and iterations per epoch differ."""
    out = dict(fingerprint)
    if world_size() > 1:
        out["world_size"] = world_size()
    return out
