"""MONAI Label inference with an RD bundle's deployed student: the shared serving and the classification task.

MONAI Label's stock ``monaibundle`` app treats every bundle as segmentation: its ``Restored`` post-transform
expects a mask, so a class vector gives HTTP 500, and a checkpoint offered as a model choice is loaded
non-strictly. :class:`RDInferTask` serves ``model.pt`` only, strictly, through the bundle's own ``inference.json``
preprocessing and network, and answers a request it cannot serve with an HTTP status and the reason.
:class:`RDClassifyInferTask` is its ``classification`` task: every class's score and the predicted label. The
segmentation task is :class:`monai_rd.label.segment_infer_task.RDSegmentInferTask`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_rd.errors import CheckpointMismatchError, DataCheckError, OptionError
from monai_rd.label.served_model import ServedStudent, check_model_file

__all__ = ["RDClassifyInferTask", "RDInferTask"]


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
        super().__init__(
            path=self.student.model_path,
            network=None,
            type=self.infer_type,
            labels=self.label_map(self.student.class_names()),
            dimension=self.student.spatial_dims(),
            description=description or f"RD student of {os.path.basename(self.student.bundle_root)}: {self.answer}",
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

    def _refused(self, status: int, error: Exception) -> HTTPException:
        # the server turns any other exception into a bare "Internal Server Error"; this keeps the reason
        return HTTPException(status_code=status, detail=f"{type(error).__name__}: {error}")

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        """Run inference on ``request["image"]``; see ``BasicInferTask.__call__``.

        Raises:
            HTTPException: 409 when a model file other than ``model.pt`` is asked for or ``model.pt`` does not
                load strictly, 404 when no model is trained yet, 422 when the image cannot be read.
        """
        try:
            chosen = request.get("model_filename")
            if chosen:
                check_model_file(chosen if isinstance(chosen, str) else chosen[0])
            return super().__call__(request, callbacks)
        except CheckpointMismatchError as e:
            raise self._refused(409, e) from e
        except FileNotFoundError as e:
            raise self._refused(404, e) from e
        except (DataCheckError, OptionError) as e:
            raise self._refused(422, e) from e

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        device = data.get("device", "cpu") if data else "cpu"
        return self.student.load(device)["preprocessing"].transforms

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        return self.student.load(device)["network"]


class RDClassifyInferTask(RDInferTask):
    """Per-class scores and the label of one image from ``<model_dir>/model.pt``.

    The reply's JSON (``params`` of ``POST /infer/<model>``) holds ``prediction`` (MONAI Label's classification
    format: ``[{"idx", "label", "score"}]`` for every class), ``scores`` (class name -> score), ``label`` (the
    predicted class; for a multi-label model the list of classes scoring at least 0.5), and ``activation``
    (``softmax``, or ``sigmoid`` for multi-label).

    See :class:`RDInferTask` for the arguments.
    """

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        device = data.get("device", "cpu") if data else "cpu"
        return self.student.load(device)["postprocessing"].transforms

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[None, dict[str, Any]]:
        """The scores of every class and the predicted label (no label file: a class is not a mask)."""
        spec = self.student.load(data.get("device", "cpu"))["spec"]
        names = spec["class_names"]
        scores = [float(s) for s in torch.as_tensor(data[self.output_label_key]).detach().cpu().reshape(-1)]
        if len(scores) != len(names):
            raise CheckpointMismatchError(f"the model gave {len(scores)} scores for {len(names)} classes {names}.")
        if spec["multi_label"]:
            label: Any = [n for n, s in zip(names, scores) if s >= 0.5]
        else:
            label = names[max(range(len(scores)), key=scores.__getitem__)]
        self.labels = names  # a newly published model may have other classes
        return None, {
            "prediction": [{"idx": i, "label": n, "score": s} for i, (n, s) in enumerate(zip(names, scores))],
            "scores": dict(zip(names, scores)),
            "label": label,
            "activation": "sigmoid" if spec["multi_label"] else "softmax",
            "model": self.student.model_path,
        }
