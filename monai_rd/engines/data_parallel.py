"""Data-parallel RD training: the trainable parts of one step as one module, wrapped in DistributedDataParallel.

An RD step calls the student (``forward_features``, then the shared head ``classify`` on both branches), Phi
and the feature loss's trainable parts. DDP synchronises gradients only for computation that runs through its
own ``forward`` (``prepare_for_backward`` arms its gradient hooks there), so wrapping the student, Phi and the
feature loss each in DDP and calling their *methods* would leave gradients silently unsynchronised, and
calling one DDP module's forward twice before a backward (the shared head) is not supported. Hence one
container, :class:`TrainableParts`, whose ``forward`` is the trainer's whole trainable forward pass: one DDP
forward and one backward per step, every trainable parameter inside it. The frozen teacher (and a fixed
teacher head) is called by the trainer outside it, so it is never wrapped and never synchronised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["TrainableParts", "average_gradients", "distributed_data_parallel"]


class TrainableParts(nn.Module):
    """The modules one training step updates, with that step's forward pass as ``forward``.

    Args:
        step: the trainer's trainable forward pass (``RDTrainer.trainable_forward``), called with ``forward``'s
            arguments.
        modules: the modules it trains (``network``, ``reprogrammer``, ``feature_loss``; None entries skipped),
            registered so that DDP sees (and synchronises) exactly their parameters.
    """

    def __init__(self, step: Callable[..., Any], **modules: nn.Module | None) -> None:
        super().__init__()
        self._step = step
        for name, module in modules.items():
            if module is not None:
                self.add_module(name, module)

    def forward(self, *args: Any) -> Any:
        """The trainer's trainable forward pass on ``args``."""
        return self._step(*args)


def distributed_data_parallel(
    module: nn.Module, device: str | torch.device, sync_batchnorm: bool = True, **kwargs: Any
) -> nn.Module:
    """Wrap ``module`` in DDP for ``device`` (the ``parallel`` argument of :class:`~monai_rd.engines.RDTrainer`).

    Args:
        module: the trainable parts (:class:`TrainableParts`).
        device: this rank's device.
        sync_batchnorm: on CUDA, turn BatchNorm layers into ``SyncBatchNorm`` (in place: the student keeps its
            parameters, buffers and state-dict keys), so batch statistics are those of the global batch, as in
            one process. PyTorch's SyncBatchNorm has no CPU kernel: on CPU (``gloo``) each rank normalises with
            its own batch's statistics and the running statistics are rank 0's (DDP broadcasts buffers).
        kwargs: other ``DistributedDataParallel`` arguments (``find_unused_parameters``, ...).

    Returns:
        The DDP module; without a process group, ``module`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return module
    device = torch.device(device)
    if device.type == "cuda":
        if sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device], output_device=device, **kwargs)
    return DistributedDataParallel(module, **kwargs)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over the ranks (for training outside DDP, e.g. direct reprogramming).

    Args:
        params: parameters whose ``grad`` is set on every rank (None gradients count as zero).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    n = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(n)
