"""Unlabelled images: a datalist's ``unlabelled`` list, trained on by the distillation terms only.

RD's KD and CKA terms need no label, so images without one still carry the teacher's knowledge to the student;
on the cached training images the teacher branch soon reproduces the labels, so its targets there add little.
An unlabelled item is ``{"image": path}``; in the training data it gets the label :data:`UNLABELLED`, which the
supervised terms of :class:`~monai_rd.losses.RDLoss` leave out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_rd.utils.constants import UNLABELLED, UNLABELLED_SPLIT
from monai_rd.utils.options import as_optional_float

__all__ = ["UNLABELLED", "UNLABELLED_SPLIT", "loss_weight_end", "training_items", "unlabelled_splits"]


def unlabelled_splits(datalist: Mapping[str, Sequence[Mapping]], use: bool) -> list[str]:
    """``["unlabelled"]`` when the datalist has that list and it is used, else ``[]`` (the splits to check).

    Args:
        datalist: ``{split: [items]}``.
        use: whether unlabelled images are trained on (``--unlabelled`` and a teacher).
    """
    return [UNLABELLED_SPLIT] if use and UNLABELLED_SPLIT in datalist else []


def training_items(
    datalist: Mapping[str, Sequence[Mapping]],
    use: bool,
    num_classes: int,
    multi_label: bool = False,
    label_key: str = "label",
) -> list[dict]:
    """The items to train on: ``training``, then (when used) every ``unlabelled`` item with the label
    :data:`UNLABELLED` (multi-label: ``num_classes`` of them).

    Args:
        datalist: ``{split: [items]}`` with a ``training`` list and optionally an ``unlabelled`` one.
        use: add the unlabelled items.
        num_classes: classes of the task.
        multi_label: labels are multi-hot vectors.
        label_key: key of the label in each item.

    Returns:
        New item dicts, labelled ones first.

    Raises:
        ValueError: an unlabelled item carries a label (it belongs in ``training``, or the label must go).
    """
    items = [dict(it) for it in datalist["training"]]
    if not unlabelled_splits(datalist, use):
        return items
    mark = [float(UNLABELLED)] * num_classes if multi_label else UNLABELLED
    for i, it in enumerate(datalist[UNLABELLED_SPLIT]):
        if label_key in it:
            raise ValueError(
                f"{UNLABELLED_SPLIT}[{i}] {it.get('image')!r} has a {label_key!r}: move it to 'training', or drop the "
                "label to use it as an unlabelled image."
            )
        items.append({**it, label_key: mark})
    return items


def loss_weight_end(value: Any, name: str, datalist: Mapping[str, Sequence[Mapping]], use: bool) -> float:
    """The end value of the alpha/beta schedule (``--alpha_end``, ``--beta_end``), unset by default.

    Unset, it is 1.0 when unlabelled images are trained on and 0.0 otherwise. The KD term (beta) is the only one
    that learns from unlabelled images besides CKA, so decaying it to 0 would stop them counting by the end of the
    run; the task suite's measured recipe with unlabelled images holds both at 1
    (``benchmarks/results/suite/README.md``). Without unlabelled images the schedule decays from 1 to 0 as before.

    Args:
        value: the option as the config or the command line gives it (``None``/``"null"``: unset).
        name: the option's name, for the error message.
        datalist: ``{split: [items]}``.
        use: whether unlabelled images are trained on (``--unlabelled`` and a teacher).

    Returns:
        The end value, at least 0.

    Raises:
        OptionError: a set value that is not a finite number >= 0.
    """
    given = as_optional_float(value, name, min_value=0.0)
    if given is not None:
        return given
    return 1.0 if unlabelled_splits(datalist, use) else 0.0
