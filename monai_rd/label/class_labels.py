"""Class labels of the images labelled in a MONAI Label datastore, as a training datalist.

MONAI Label stores a label as a file per image and tag, with a JSON ``info`` beside it (``PUT /datastore/label``
takes both: the file, and ``params`` that become the info). A classification label has no mask, so the class is
read from, in this order:

1. the label's info: ``{"label": "<class name>"}`` or ``{"label": <class index>}`` (the ``params`` of the upload);
2. the label file itself, when it is JSON with the same key (``{"label": "frontal"}``).

An image whose label names no known class is refused with its id and the class names, never silently dropped:
when the label is saved (the app's datastore checks it with :func:`label_class`, HTTP 422), and again when a
training reads it. Label maps (NIfTI, :mod:`monai_rd.label.mask_labels`) are segmentation labels, not class labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from monai_rd.errors import DataCheckError
from monai_rd.label.mask_labels import is_label_map

__all__ = ["CLASS_KEY", "class_index", "label_class", "labelled_datalist", "read_class_label"]

CLASS_KEY = "label"


def class_index(value: Any, class_names: Sequence[str], where: str) -> int:
    """The index of a class given by name or index.

    Args:
        value: a class name from ``class_names``, or its index (an int, or a string of digits).
        class_names: the classes in output order.
        where: what holds the value (the image id), for the error message.

    Returns:
        The class index in ``[0, len(class_names))``.

    Raises:
        DataCheckError: ``value`` is neither one of ``class_names`` nor a valid index.
    """
    names = [str(c) for c in class_names]
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, bool):
        value = None
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if 0 <= index < len(names) and str(value).strip().lstrip("+").isdigit():
        return index
    raise DataCheckError(
        f"{where}: its label {value!r} is not one of the classes {names} (nor an index into them); save the label "
        f"again with params {{\"{CLASS_KEY}\": \"<class name>\"}}."
    )


def read_class_label(info: dict[str, Any] | None, label_path: str | None) -> Any:
    """The class a datastore label gives: from its info, else from a JSON label file; None when neither has one.

    Args:
        info: the label's info as the datastore keeps it (the upload's ``params``, plus ``ts``, ``name``, ...).
        label_path: the stored label file, or None.

    Returns:
        The raw class value (a name or an index), or None.
    """
    if info and info.get(CLASS_KEY) is not None:
        return info[CLASS_KEY]
    if label_path and os.path.isfile(label_path) and label_path.lower().endswith(".json"):
        try:
            with open(label_path) as f:
                content = json.load(f)
        except (OSError, ValueError):
            return None
        if isinstance(content, dict):
            return content.get(CLASS_KEY)
    return None


def label_class(info: dict[str, Any] | None, label_path: str | None, class_names: Sequence[str], where: str) -> int:
    """The class index a label gives (see :func:`read_class_label` and :func:`class_index`).

    Raises:
        DataCheckError: the label gives no class, or one that is not in ``class_names``.
    """
    value = read_class_label(info, label_path)
    if value is None:
        raise DataCheckError(
            f"{where}: its label has no class; save it with params {{\"{CLASS_KEY}\": \"<class name>\"}} (one of "
            f"{list(class_names)}), or as a JSON file {{\"{CLASS_KEY}\": ...}}."
        )
    return class_index(value, class_names, where)


def labelled_datalist(datastore: Any, class_names: Sequence[str], tag: str = "final") -> list[dict[str, Any]]:
    """``{"image": path, "label": index}`` for every image of ``datastore`` that has a class label under ``tag``.

    Args:
        datastore: a ``monailabel.interfaces.datastore.Datastore``.
        class_names: the classes in output order.
        tag: the label tag (MONAI Label's ``final`` is what annotators save).

    Returns:
        The images with a class label under ``tag``, in the datastore's order (paths as the datastore gives them);
        images whose label is a label map (segmentation) are not listed.

    Raises:
        DataCheckError: a label names no known class, or a label has no class at all (its id is named).
    """
    items = []
    for image_id in datastore.list_images():
        label_id = datastore.get_label_by_image_id(image_id, tag)
        if not label_id:
            continue
        path = datastore.get_label_uri(label_id, tag)
        if is_label_map(path):
            continue
        index = label_class(datastore.get_label_info(label_id, tag), path, class_names, f"image {image_id!r}")
        items.append({"image": datastore.get_image_uri(image_id), "label": index})
    return items
