"""Batch inference over the datastore that also runs on a machine without a GPU.

MONAI Label's ``BatchInferTask`` spreads the images over ``cuda:<i>`` for every GPU (``multi_gpu``, its default):
with none it divides by zero; and one image the model cannot read (a volume in a datastore shared with a 2D
model) ends the whole batch. :class:`RDBatchInferTask` runs on the requested device, on the CPU when there is no
GPU, answers ``{"error": <reason>}`` for an image that fails and goes on, and otherwise is MONAI Label's own
(each image through the app's checked ``infer``, the result saved as the image's ``original`` label).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.batch_infer import BatchInferTask

__all__ = ["RDBatchInferTask"]

logger = logging.getLogger(__name__)


class RDBatchInferTask(BatchInferTask):
    """``BatchInferTask`` that uses one device when there are no GPUs to spread over."""

    def __call__(self, request: dict[str, Any], datastore: Datastore, infer: Callable) -> dict[str, Any]:
        if not torch.cuda.is_available():
            request = {**request, "multi_gpu": False, "device": "cpu"}

        def infer_one(req: dict[str, Any], store: Datastore) -> dict[str, Any]:
            try:
                return infer(req, store)
            except Exception as e:
                reason = getattr(e, "detail", None) or f"{type(e).__name__}: {e}"
                logger.warning(f"batch inference: {req.get('image')!r} failed: {reason}")
                return {"error": reason}

        return super().__call__(request, datastore, infer_one)
