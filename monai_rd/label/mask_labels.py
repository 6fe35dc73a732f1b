"""Segmentation labels in a MONAI Label datastore: label maps drawn in a client, checked when saved, as a datalist.

3D Slicer's MONAI Label module saves a segmentation with ``PUT /datastore/label`` as a NIfTI label map
(``.nii.gz``, its default) on the grid of the volume it was drawn on, the value of each segment being its position
in the model's ``labels`` (``{name: value}``, background 0), and ``params`` ``{"label_info": [{"name", "idx"}]}``.
A 2D image is drawn on as a one-slice volume, so its map arrives 3D with a trailing axis of 1.

:func:`conform_label_map` checks such a file against its image and the model's classes when it is saved (the
grid, the values, the segment names) and returns it on exactly the image's grid, as ``uint8``, the form the
bundle's training reads; :func:`mask_datalist` lists the saved maps as a training datalist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from monai_rd.errors import DataCheckError

__all__ = ["LABEL_MAP_EXTENSIONS", "conform_label_map", "is_label_map", "mask_datalist"]

LABEL_MAP_EXTENSIONS = (".nii.gz", ".nii")


def is_label_map(path: str | None) -> bool:
    """Whether ``path`` is a NIfTI label map (by its extension)."""
    return bool(path) and str(path).lower().endswith(LABEL_MAP_EXTENSIONS)


def _load(path: str, what: str) -> Any:
    try:
        image = nib.load(path)
        return image, np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel's ImageFileError, a truncated gzip, an empty file, ...
        raise DataCheckError(f"the {what} is not a readable NIfTI file ({type(e).__name__}: {e}).") from e


def conform_label_map(
    label_file: str, image_file: str, class_names: Sequence[str], label_info: Any = None
) -> nib.Nifti1Image:
    """A label map checked against its image and classes, on the image's grid.

    Args:
        label_file: the uploaded label map (NIfTI).
        image_file: its image in the datastore (NIfTI).
        class_names: the model's classes, background first: the map's values index them.
        label_info: the upload's ``params["label_info"]`` (3D Slicer: ``[{"name": ..., "idx": ...}]``), or None.

    Returns:
        The map as ``uint8`` with the image's shape and affine (trailing axes of size 1 beyond the image's
        dimensions, as a 2D image's map drawn in a 3D viewer has, are dropped).

    Raises:
        DataCheckError: a file is unreadable, the map's shape or grid is not the image's, a value is not a class
            index, or ``label_info`` names a segment that is not a class.
    """
    names = [str(c) for c in class_names]
    image, _ = _load(image_file, "image (label maps are trained on NIfTI images)")
    label, data = _load(label_file, "label map")
    shape = tuple(image.shape)
    while data.ndim > len(shape) and data.shape[-1] == 1:
        data = data[..., 0]
    if tuple(data.shape) != shape:
        raise DataCheckError(
            f"the label map's shape {tuple(label.shape)} is not its image's {shape}: draw it on the image itself."
        )
    axes = list(range(min(len(shape), 3)))  # the image's spatial axes; a 2D image's third column is arbitrary
    grid_ok = np.allclose(label.affine[:3, axes], image.affine[:3, axes], rtol=1e-4, atol=1e-3) and np.allclose(
        label.affine[:3, 3], image.affine[:3, 3], rtol=1e-4, atol=1e-3
    )
    if not grid_ok:
        raise DataCheckError(
            "the label map is not on its image's grid (its affine differs: another orientation, voxel size or "
            f"origin); image affine {np.round(image.affine, 4).tolist()}, "
            f"label map {np.round(label.affine, 4).tolist()}."
        )
    values = np.unique(data)
    bad = [v for v in values.tolist() if not (float(v).is_integer() and 0 <= v < len(names))]
    if bad:
        raise DataCheckError(
            f"the label map has values {bad[:5]} that are not class indices: its values must be 0 (background) to "
            f"{len(names) - 1}, the classes {names} in this order."
        )
    segments = label_info if isinstance(label_info, list) else []
    unknown = [s.get("name") for s in segments if isinstance(s, dict) and s.get("name") not in names]
    if unknown:
        raise DataCheckError(f"the label map's segments {unknown} are not classes of the model {names[1:]}.")
    out = nib.Nifti1Image(data.astype(np.uint8), image.affine)
    out.header.set_xyzt_units(*image.header.get_xyzt_units())
    return out


def mask_datalist(
    datastore: Any, tag: str = "final", spatial_dims: int | None = None, num_classes: int | None = None
) -> list[dict[str, str]]:
    """``{"image": path, "label": path}`` for every image of ``datastore`` with a label map under ``tag`` that a
    model of ``spatial_dims`` and ``num_classes`` can train on.

    Args:
        datastore: a ``monailabel.interfaces.datastore.Datastore``.
        tag: the label tag (``final``: what annotators save).
        spatial_dims: keep only the images of this many dimensions (a datastore may hold a 2D and a 3D model's
            images); None keeps all.
        num_classes: keep only the label maps whose values are below it (saved for a model with as many classes);
            None keeps all.

    Returns:
        The pairs in the datastore's order; images whose label under ``tag`` is not a label map (a class label) are
        not listed.
    """
    items = []
    for image_id in datastore.list_images():
        label_id = datastore.get_label_by_image_id(image_id, tag)
        path = datastore.get_label_uri(label_id, tag) if label_id else ""
        if not (path and is_label_map(path) and os.path.isfile(path)):
            continue
        label = nib.load(path)
        if spatial_dims is not None and len(label.shape) != spatial_dims:
            continue
        if num_classes is not None and np.asanyarray(label.dataobj).max() >= num_classes:
            continue
        items.append({"image": datastore.get_image_uri(image_id), "label": path})
    return items
