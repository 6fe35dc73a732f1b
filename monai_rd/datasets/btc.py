"""Brain tumour MRI classification (BTC): the Kaggle "Brain Tumor MRI Dataset" (M. Nickparvar, 2021), 4 classes in
``Training/`` and ``Testing/`` class folders.

The dataset merges figshare (Cheng et al. 2017: 3,064 slices of 233 patients, ~13 per patient), SARTAJ and Br35H
and renames every file (``Tr-gl_0010.jpg``): no file name holds a patient id, so a split of ``Training/`` by
image puts slices of one patient in training and validation, and validation scores (and the checkpoint they
select) come out optimistic. Pass a ``groups`` table (image -> patient) to split by patient; without one the
split is by image. Either way, run :func:`monai_rd.data.check_datalist` on the result: it refuses exact
duplicates (the same file or the same pixels) across splits, including between ``Training/`` and ``Testing/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from monai_rd.data.datalist import (
    list_class_folder,
    load_saved_datalist,
    read_groups_csv,
    save_datalist,
    split_datalist,
)
from monai_rd.datasets.spec import DatasetSpec

__all__ = ["BTC_SPEC", "BTC_CLASSES", "btc_datalist", "load_saved_datalist", "save_datalist"]

BTC_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")

BTC_LAYOUT = """expected layout (the Kaggle 'Brain Tumor MRI Dataset' by Masoud Nickparvar, unzipped):
  {root}/Training/glioma/Tr-gl_0010.jpg ...   and Training/meningioma, Training/notumor, Training/pituitary
  {root}/Testing/glioma/Te-gl_0010.jpg ...    and Testing/meningioma, Testing/notumor, Testing/pituitary
Download it from https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset
(kaggle datasets download -d masoudnickparvar/brain-tumor-mri-dataset && unzip brain-tumor-mri-dataset.zip)
and pass --dataset_dir <the folder holding Training/ and Testing/>."""
BTC_SPEC = DatasetSpec("BTC", BTC_CLASSES, BTC_LAYOUT)



def btc_datalist(
    dataset_dir: str,
    datalist_json: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: str | Mapping[str, Any] | Callable[[str], Any] | None = None,
) -> dict[str, list[dict]]:
    """BTC with the dataset's own test set and a seeded validation split of ``Training/``, by patient when known.

    ``Testing/`` is the test split (the dataset author's; not known to be patient-disjoint from ``Training/``).
    Without ``groups``, ``Training/`` is split per class into training and validation by image (``val_fraction``,
    seeded), with the leak named in the module docstring: slices of one patient on both sides. With ``groups``
    every image of a group (patient) lands on one side; ``val_fraction`` is then the fraction of groups. When
    ``datalist_json`` exists it is read instead (so the validation split is fixed once written) after checking
    its classes, seed, fraction and, with ``groups``, that it was split by group, and that every listed image
    exists; otherwise the split is written there.

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.
        datalist_json: where the split is written and later re-read; None keeps it in memory.
        seed: validation-split seed.
        val_fraction: fraction of each ``Training/`` class (of the groups, with ``groups``) used for validation.
        groups: the patient (or any group) of each ``Training/`` image: a CSV file with the columns ``image``
            (file name, e.g. ``Tr-gl_0010.jpg``) and ``group`` (:func:`~monai_rd.data.datalist.read_groups_csv`),
            a mapping from file name or path to group, or a callable ``path -> group``. Every ``Training/`` image
            needs one.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": class index}`` with
        classes ``glioma, meningioma, notumor, pituitary``.

    Raises:
        FileNotFoundError: ``dataset_dir``, ``Training``/``Testing``, a class folder or a listed image is missing
            (the message gives the expected layout and where to download).
        ValueError: a class folder holds no image.
        DataCheckError: the saved datalist was written for other settings (or split by image where ``groups`` is
            given now), or ``groups`` lacks a ``Training/`` image or is a malformed CSV.
    """
    root = os.path.abspath(dataset_dir)
    meta = {"classes": list(BTC_CLASSES), "seed": seed, "val_fraction": val_fraction}
    # only a grouped run asks for a grouped saved split; a split by patient is still fine for a run without groups
    expected = {**meta, "split_by": "group"} if groups is not None else meta
    if not os.path.isdir(root):
        raise BTC_SPEC.not_found(dataset_dir)
    if datalist_json and os.path.isfile(datalist_json):
        return load_saved_datalist(datalist_json, root, **expected)
    found = sorted(os.listdir(root))
    parts = {}
    for part in ("Training", "Testing"):
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            raise BTC_SPEC.missing(f"BTC folder {folder!r} is missing (found in {root}: {found[:20]}).", dataset_dir)
        try:
            parts[part] = list_class_folder(folder, BTC_CLASSES)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{e}\n{BTC_SPEC.layout_for(dataset_dir)}") from e
    if isinstance(groups, (str, os.PathLike)):
        groups = read_groups_csv(os.fspath(groups))
    out = split_datalist(parts["Training"], val_fraction=val_fraction, test_fraction=0.0, seed=seed, groups=groups)
    out["test"] = sorted(parts["Testing"], key=lambda it: it["image"])
    if datalist_json:
        save_datalist(out, datalist_json, root, **meta, split_by="image" if groups is None else "group")
    return out
