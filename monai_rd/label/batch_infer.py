"""Batch inference over the datastore that also runs on a machine without a GPU.

MONAI Label's ``BatchInferTask`` spreads the images over ``cuda:<i>`` for every GPU (``multi_gpu``, its default):
with none it divides by zero. :class:`RDBatchInferTask` runs on the requested device, on the CPU when there is no
GPU, and otherwise is MONAI Label's own (each image through the app's checked ``infer``, the result saved as the
image's ``original`` label).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.batch_infer import BatchInferTask

__all__ = ["RDBatchInferTask"]


class RDBatchInferTask(BatchInferTask):
    """``BatchInferTask`` that uses one device when there are no GPUs to spread over."""

    def __call__(self, request: dict[str, Any], datastore: Datastore, infer: Callable) -> dict[str, Any]:
        if not torch.cuda.is_available():
            request = {**request, "multi_gpu": False, "device": "cpu"}
        return super().__call__(request, datastore, infer)
