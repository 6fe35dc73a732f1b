"""The validation score that decides whether a newly trained model replaces the served one.

Both models are scored the same way, on the new run's validation images, through the server's own answers (the
infer task of each model folder): the new model is published only if it scores at least as well as the served
one. Classification: accuracy of the predicted class. Segmentation: mean Dice over the foreground classes of the
label map on the image's grid (a class absent from both the prediction and the label counts 1).
"""

from __future__ import annotations

import os
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

__all__ = ["validation_score"]


def validation_score(task: Any, datalist: list[dict[str, Any]], device: str = "cpu") -> tuple[str, float]:
    """The score of ``task``'s served model on ``datalist``.

    Args:
        task: an :class:`~monai_rd.label.infer_task.RDClassifyInferTask` or
            :class:`~monai_rd.label.segment_infer_task.RDSegmentInferTask`.
        datalist: ``{"image": path, "label": class index}`` (classification) or ``{"image": path, "label": label
            map path}`` (segmentation) items.
        device: where to run the model.

    Returns:
        ``("accuracy", value)`` or ``("mean_dice", value)``, in [0, 1].

    Raises:
        ValueError: ``datalist`` is empty.
    """
    if not datalist:
        raise ValueError("validation_score: no validation images.")
    names = task.student.load(device)["spec"]["class_names"]
    scores = []
    for item in datalist:
        label_file, answer = task({"image": item["image"], "device": device})
        try:
            if task.type != "segmentation":
                scores.append(float(answer["label"] == names[int(item["label"])]))
                continue
            pred = torch.as_tensor(np.asarray(nib.load(label_file).dataobj), dtype=torch.long)
        finally:
            if label_file and os.path.isfile(label_file):
                os.remove(label_file)
        truth = torch.as_tensor(np.asarray(nib.load(item["label"]).dataobj), dtype=torch.long).reshape(pred.shape)
        dice = compute_dice(one_hot(pred[None, None], len(names)), one_hot(truth[None, None], len(names)),
                            include_background=False, ignore_empty=False)
        scores.append(float(dice.nanmean()))
    return ("mean_dice" if task.type == "segmentation" else "accuracy"), float(np.mean(scores))
