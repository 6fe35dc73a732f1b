"""The validation and test metrics of each kind of task, as a MONAI evaluator takes them."""

from __future__ import annotations

import functools
from typing import Any

from ignite.metrics import Accuracy, ConfusionMatrix, EpochMetric, Recall
from monai.handlers import ROCAUC, MeanDice, from_engine
from monai.metrics import compute_roc_auc

from monai_rd.handlers.output_transforms import stacked_from_engine

__all__ = ["classification_metrics", "segmentation_metrics"]


def classification_metrics(num_classes: int, multi_label: bool = False) -> dict[str, dict[str, Any]]:
    """The metrics of a classification task, for ``SupervisedEvaluator(key_val_metric=..., additional_metrics=...)``.

    One label per image: accuracy (the key metric: it selects ``model.pt``), macro AUC, recall of each class and the
    confusion matrix. Multi-label (multi-hot labels, e.g. the 14 findings of ChestX-ray14): the mean (macro) AUC over
    the classes is the key metric, and the AUC of each class, in class order, is recorded beside it (MONAI's ROCAUC
    handler keeps only the first value of ``average="none"``, so an ignite ``EpochMetric`` computes them).

    Args:
        num_classes: classes of the task.
        multi_label: the labels are multi-hot.

    Returns:
        ``{"key": {name: metric}, "additional": {name: metric, ...}}``.
    """
    pred_label = stacked_from_engine(["pred", "label"])
    if multi_label:
        return {
            "key": {"auc": ROCAUC(average="macro", output_transform=pred_label)},
            "additional": {
                "auc_per_finding": EpochMetric(
                    functools.partial(compute_roc_auc, average="none"), output_transform=pred_label,
                    check_compute_fn=False,
                )
            },
        }
    return {
        "key": {"accuracy": Accuracy(output_transform=pred_label)},
        "additional": {
            "auc": ROCAUC(
                average="macro", output_transform=stacked_from_engine(["pred", "label"], onehot_label=num_classes)
            ),
            "recall_per_class": Recall(average=False, output_transform=pred_label),
            "confusion_matrix": ConfusionMatrix(num_classes=num_classes, output_transform=pred_label),
        },
    }


def segmentation_metrics() -> dict[str, dict[str, Any]]:
    """Mean Dice of the foreground classes (the key metric), averaged over the classes present in each item's
    reference, and the Dice of each foreground class over the split.

    Returns:
        ``{"key": {"mean_dice": ...}, "additional": {"dice_per_class": ...}}``.
    """
    transform = from_engine(["pred", "label"])
    return {
        "key": {"mean_dice": MeanDice(include_background=False, output_transform=transform)},
        "additional": {
            "dice_per_class": MeanDice(include_background=False, reduction="mean_batch", output_transform=transform)
        },
    }
