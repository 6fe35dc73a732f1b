"""Active learning for RD students: an uncertainty score per image and the strategy that serves the most uncertain.

MONAI Label's epistemic scoring runs its infer task several times and reads a probability map from the task's
output; an RD task's output is class scores or an argmax label map, and the students have no dropout by default.
:class:`EntropyScoring` subclasses ``EpistemicScoring`` (its loop over the unlabelled images, its skip of images
already scored by the same ``model.pt``, its writing into each image's info) and computes the score from the served
model's probabilities (:meth:`~monai_rd.label.served_model.ServedStudent.probabilities`):

- classification: the entropy of the softmax (for a multi-label model, the summed binary entropies of the
  sigmoids);
- segmentation: the mean over voxels of each voxel's softmax entropy;
- with dropout in the student, the same on the mean of ``simulation_size`` Monte Carlo dropout passes.

:class:`EntropyStrategy` is MONAI Label's ``Epistemic`` strategy on that score (the highest score among the
images served least recently). ``random`` and ``first`` are MONAI Label's own.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring
from monailabel.utils.others.generic import name_to_device

from monai_rd.label.infer_task import RDInferTask

__all__ = ["EntropyScoring", "EntropyStrategy", "mean_entropy", "score_key"]

logger = logging.getLogger(__name__)


def score_key(model: str) -> str:
    """The image-info key of ``model``'s uncertainty score (its ``model.pt`` time stamp is ``<key>_ts``)."""
    return f"entropy_{model}"


def mean_entropy(probabilities: torch.Tensor, multi_label: bool = False) -> float:
    """The predictive entropy (nats) of class probabilities, averaged over the spatial positions.

    Args:
        probabilities: ``(R, C, *spatial)``: ``R`` samples (MC dropout passes, or 1), ``C`` classes; softmax
            probabilities, or per-class sigmoids with ``multi_label``.
        multi_label: sum the classes' binary entropies instead of the categorical entropy.

    Returns:
        The entropy of the samples' mean, averaged over the spatial positions: 0 for a one-hot prediction, at most
        ``log(C)`` (``C log 2`` for multi-label).
    """
    p = probabilities.double().mean(dim=0).clamp(1e-12, 1.0)
    entropy = -(p * p.log())
    if multi_label:
        q = (1 - p).clamp(1e-12, 1.0)
        entropy = entropy - q * q.log()
    return float(entropy.sum(dim=0).mean())


class EntropyScoring(EpistemicScoring):
    """Writes each unlabelled image's uncertainty under the served model into the image's info.

    ``POST /scoring/<name>`` (and, with MONAI Label's default auto-update, after every training) fills
    ``info[score_key(model)]`` (see :func:`mean_entropy`) and ``info[score_key(model) + "_ts"]`` (the ``model.pt``
    time stamp: images already scored by the same model are skipped). Request options: ``simulation_size`` (MC
    dropout passes when the student has dropout, default 5), ``max_samples``, ``device``.

    Args:
        infer_task: the model's infer task (its served student is scored).
    """

    def __init__(self, infer_task: RDInferTask, simulation_size: int = 5):
        key = score_key(infer_task.name)
        super().__init__(infer_task, simulation_size=simulation_size, key_output_entropy=key,
                         key_output_ts=f"{key}_ts")
        self.description = f"Uncertainty (softmax entropy; MC dropout if the student has dropout) of {infer_task.name}"

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Score the unlabelled images not yet scored by the served ``model.pt`` (``EpistemicScoring``'s loop, one
        image at a time; its skip test reads a fixed ``epistemic_ts`` key, not this model's).

        Returns:
            ``{"total", "skipped", "executed", "latency"}`` as MONAI Label's scoring answers.
        """
        start = time.time()
        unlabelled = datastore.get_unlabeled_images()
        if not self.infer_task.student.exists():
            return {"total": len(unlabelled), "skipped": len(unlabelled), "executed": 0, "latency": 0.0,
                    "reason": "no model.pt trained yet"}
        model_ts = int(os.stat(self.infer_task.student.model_path).st_mtime)
        todo = [i for i in unlabelled if datastore.get_image_info(i).get(self.key_output_ts) != model_ts]
        max_samples = int(request.get("max_samples", self.max_samples) or 0)
        todo = todo[:max_samples] if max_samples else todo
        self._device = name_to_device(request.get("device"))
        simulation_size = max(1, int(request.get("simulation_size", self.simulation_size)))
        for image_id in todo:
            self.run_scoring(image_id, simulation_size, model_ts, datastore)
        return {"total": len(unlabelled), "skipped": len(unlabelled) - len(todo), "executed": len(todo),
                "latency": round(time.time() - start, 3)}

    def run_scoring(self, image_id: str, simulation_size: int, model_ts: int, datastore: Datastore) -> None:
        """One image's score into its info (replaces the base class's, which reads a probability map from the
        infer task's output)."""
        start = time.time()
        student = self.infer_task.student
        device = getattr(self, "_device", "cpu")
        try:
            probs = student.probabilities(datastore.get_image_uri(image_id), device=device, mc_samples=simulation_size)
        except Exception as e:  # an image this model does not read (another model's, in a shared datastore)
            logger.warning(f"{self.key_output_entropy}: {image_id} not scored ({type(e).__name__}: {e})")
            return
        score = mean_entropy(probs, multi_label=bool(student.load(device)["spec"].get("multi_label")))
        datastore.update_image_info(image_id, {self.key_output_entropy: score, self.key_output_ts: model_ts})
        logger.info(f"{self.key_output_entropy}: {image_id} => {score:.4f} ({len(probs)} pass(es), "
                    f"{time.time() - start:.2f} s)")


class EntropyStrategy(Epistemic):
    """The next image to label: the highest :class:`EntropyScoring` score among the unlabelled images served
    least recently (MONAI Label's ``Epistemic`` on ``score_key(model)``); unscored images count as 0.

    The answer is ``{"id": <image id>, "score": <its score>}``.
    """

    def __init__(self, model: str):
        super().__init__(key=score_key(model), desc=f"The unlabelled image {model} is least sure about (entropy)")

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        chosen = super().__call__(request, datastore)
        if not chosen:
            return None
        return {"id": chosen["id"], "score": datastore.get_image_info(chosen["id"]).get(self.key, 0.0)}
