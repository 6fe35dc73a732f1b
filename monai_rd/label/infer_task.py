"""MONAI Label inference with an RD bundle's deployed student: the shared serving and the classification task.

MONAI Label's stock ``monaibundle`` app treats every bundle as segmentation: its ``Restored`` post-transform
expects a mask, so a class vector gives HTTP 500, and a checkpoint offered as a model choice is loaded
non-strictly. :class:`RDInferTask` serves ``model.pt`` only, strictly, through the bundle's own ``inference.json``
preprocessing and network, and answers a request it cannot serve with an HTTP status and the reason (see
:mod:`monai_rd.label.http_errors`): 409 without a usable model, 422 for an image it cannot read or a bad option.
:class:`RDClassifyInferTask` is its ``classification`` task: every class's score and the predicted label, also as
a JSON file (``output=image``). The segmentation task is :class:`monai_rd.label.segment_infer_task.RDSegmentInferTask`.
No answer names a server path: the model is identified by its name and ``model.pt``'s SHA-256.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Callable

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from monai_rd.errors import CheckpointMismatchError
from monai_rd.label.http_errors import http_error, refusal
from monai_rd.label.served_model import ServedStudent, check_model_file

__all__ = ["RDClassifyInferTask", "RDInferTask"]

# request keys a client may not set: they would make BasicInferTask answer with its whole data dict (tensors and
# the image's server path) or skip the checks of this task
_INTERNAL_KEYS = ("skip_writer", "result_write_to_file", "result_extension", "result_dtype", "result_compress")


def _device(value: Any) -> str:
    """A device this machine has, from a request's ``device`` (MONAI Label's names: ``cuda``, ``cpu``, a GPU's)."""
    name = name_to_device(value)
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise http_error(422, f"device {value!r} is not a device of this server ({e}).") from e
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise http_error(422, f"device {value!r}: this server has {torch.cuda.device_count()} GPU(s).")
    return name


class RDInferTask(BasicInferTask):
    """A ``BasicInferTask`` over ``<model_dir>/model.pt`` of an RD bundle (reloaded when the file changes).

    Subclasses set :attr:`infer_type` and :attr:`answer` and may map the class names to MONAI Label's ``labels``
    (:meth:`label_map`).

    Args:
        bundle_root: the RD bundle folder.
        model_dir: the folder of the served ``model.pt``; default ``<bundle_root>/models``.
        description: shown by MONAI Label clients.

    Raises:
        FileNotFoundError: the bundle has no ``configs/inference.json``.
    """

    infer_type: str = InferType.CLASSIFICATION
    answer: str = "per-class scores"

    def __init__(self, bundle_root: str, model_dir: str | None = None, description: str | None = None):
        self.student = ServedStudent(bundle_root, model_dir)
        self.name = os.path.basename(self.student.bundle_root)
        super().__init__(
            path=self.student.model_path,
            network=None,
            type=self.infer_type,
            labels=self.label_map(self.student.class_names()),
            dimension=self.student.spatial_dims(),
            description=description or f"RD student of {self.name}: {self.answer}",
            load_strict=True,
        )

    def label_map(self, class_names: Sequence[str]) -> Any:
        """MONAI Label's ``labels`` for the model's classes: the class names."""
        return list(class_names)

    def is_valid(self) -> bool:
        """Listed even before a model is trained; a request then says what to do."""
        return True

    def config(self) -> dict[str, Any]:
        config = dict(super().config())
        config["trained"] = self.student.exists()
        return config

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        """Run inference on ``request["image"]`` (a file or DICOM series folder); see ``BasicInferTask.__call__``.

        Raises:
            HTTPException: 409 when a model file other than ``model.pt`` is asked for, or ``model.pt`` is missing or
                does not load strictly; 422 when the image cannot be read or an option (``device``) is unusable.
        """
        request = {k: v for k, v in request.items() if k not in _INTERNAL_KEYS}
        if not isinstance(logging.getLevelName(str(request.get("logging", "INFO")).upper()), int):
            request["logging"] = "INFO"  # BasicInferTask would fail on an unknown level name
        try:
            request["device"] = _device(request.get("device"))
            chosen = request.get("model_filename")
            if chosen:
                check_model_file(chosen if isinstance(chosen, str) else chosen[0])
            self.student.load(request["device"])  # a missing or mismatched model is the model's problem (409)
            return super().__call__(request, callbacks)
        except Exception as e:
            raise refusal(e, default=500) from e  # an unexpected failure is the server's, still with its reason

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """The bundle's preprocessing; an image it cannot read is the request's problem (422)."""
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:
            raise refusal(e, default=422) from e

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        device = data.get("device", "cpu") if data else "cpu"
        return self.student.load(device)["preprocessing"].transforms

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        return self.student.load(device)["network"]


class RDClassifyInferTask(RDInferTask):
    """Per-class scores and the label of one image from ``<model_dir>/model.pt``.

    The reply's JSON (``params`` of ``POST /infer/<model>``) holds ``prediction`` (MONAI Label's classification
    format: ``[{"idx", "label", "score"}]`` for every class), ``scores`` (class name -> score), ``label`` (the
    predicted class; for a multi-label model the list of classes scoring at least 0.5), ``activation``
    (``softmax``, or ``sigmoid`` for multi-label), ``model`` (the model's name) and ``model_sha256`` (of the
    ``model.pt`` that answered).

    See :class:`RDInferTask` for the arguments.
    """

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        device = data.get("device", "cpu") if data else "cpu"
        return self.student.load(device)["postprocessing"].transforms

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[str, dict[str, Any]]:
        """The scores of every class and the predicted label, in the answer's JSON and as a JSON file (what
        ``output=image`` returns, and what MONAI Label saves as the image's ``original`` label with ``save_label``:
        ``{"label": <class>, "scores": {...}}``, a class label the datastore accepts)."""
        loaded = self.student.load(data.get("device", "cpu"))
        spec = loaded["spec"]
        names = spec["class_names"]
        scores = [float(s) for s in torch.as_tensor(data[self.output_label_key]).detach().cpu().reshape(-1)]
        if len(scores) != len(names):
            raise CheckpointMismatchError(f"the model gave {len(scores)} scores for {len(names)} classes {names}.")
        if spec["multi_label"]:
            label: Any = [n for n, s in zip(names, scores) if s >= 0.5]
        else:
            label = names[max(range(len(scores)), key=scores.__getitem__)]
        self.labels = names  # a newly published model may have other classes
        result = {
            "prediction": [{"idx": i, "label": n, "score": s} for i, (n, s) in enumerate(zip(names, scores))],
            "scores": dict(zip(names, scores)),
            "label": label,
            "activation": "sigmoid" if spec["multi_label"] else "softmax",
            "model": self.name,
            "model_sha256": loaded["sha256"],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"label": label, "scores": result["scores"]}, f)
        return f.name, result
