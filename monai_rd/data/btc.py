"""Brain tumour MRI classification (BTC): the Kaggle "Brain Tumor MRI Dataset" (M. Nickparvar, 2021), 4 classes in
``Training/`` and ``Testing/`` class folders."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from monai_rd.data.datalist import SPLITS, list_class_folder, split_datalist, write_json_atomic

__all__ = ["BTC_CLASSES", "btc_datalist", "load_saved_datalist", "save_datalist"]

BTC_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")

BTC_LAYOUT = """expected layout (the Kaggle 'Brain Tumor MRI Dataset' by Masoud Nickparvar, unzipped):
  {root}/Training/glioma/Tr-gl_0010.jpg ...   and Training/meningioma, Training/notumor, Training/pituitary
  {root}/Testing/glioma/Te-gl_0010.jpg ...    and Testing/meningioma, Testing/notumor, Testing/pituitary
Download it from https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset
(kaggle datasets download -d masoudnickparvar/brain-tumor-mri-dataset && unzip brain-tumor-mri-dataset.zip)
and pass --dataset_dir <the folder holding Training/ and Testing/>."""


def _layout(root: str) -> str:
    return BTC_LAYOUT.format(root=root)


def save_datalist(datalist: Mapping[str, list[dict]], datalist_json: str, dataset_dir: str, **meta) -> None:
    """Write a datalist with image paths relative to ``dataset_dir`` plus ``meta`` fields (atomically).

    Args:
        datalist: ``{"training", "validation", "test"}`` lists with absolute image paths.
        datalist_json: output file.
        dataset_dir: the dataset root the paths are made relative to.
        meta: recorded beside the splits (e.g. ``classes``, ``seed``); checked by :func:`load_saved_datalist`.
    """
    root = os.path.abspath(dataset_dir)
    rel = {s: [{**it, "image": os.path.relpath(it["image"], root)} for it in datalist[s]] for s in SPLITS}
    write_json_atomic({**meta, **rel}, datalist_json)


def load_saved_datalist(datalist_json: str, dataset_dir: str, **expected) -> dict[str, list[dict]]:
    """Read a datalist written by :func:`save_datalist`, checking it still fits the dataset.

    Args:
        datalist_json: the file.
        dataset_dir: the dataset root its paths are relative to.
        expected: fields that must equal the recorded ones (e.g. ``classes=[...]``, ``seed=0``).

    Returns:
        The splits with absolute image paths.

    Raises:
        ValueError: a recorded field differs from ``expected`` or a split is absent (delete the file to re-split).
        FileNotFoundError: a listed image is missing (names its path).
    """
    with open(datalist_json) as f:
        saved = json.load(f)
    for key, value in expected.items():
        value = list(value) if isinstance(value, tuple) else value
        if saved.get(key) != value:
            raise ValueError(
                f"{datalist_json} was written with {key}={saved.get(key)!r}, not {value!r}; delete it to re-split."
            )
    absent = [s for s in SPLITS if s not in saved]
    if absent:
        raise ValueError(f"{datalist_json} lacks the split(s) {absent}; delete it to re-split.")
    root = os.path.abspath(dataset_dir)
    out = {s: [{**it, "image": os.path.join(root, it["image"])} for it in saved[s]] for s in SPLITS}
    missing = [it["image"] for s in SPLITS for it in out[s] if not os.path.isfile(it["image"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {datalist_json} are missing, first: {missing[0]}; restore them, or "
            "delete the datalist to re-split."
        )
    return out


def btc_datalist(
    dataset_dir: str, datalist_json: str | None = None, seed: int = 0, val_fraction: float = 0.15
) -> dict[str, list[dict]]:
    """BTC with the dataset's own test set and a stratified, seeded validation split of ``Training/``.

    ``Testing/`` is the test split. ``Training/`` is split per class into training and validation
    (``val_fraction``, seeded). When ``datalist_json`` exists it is read instead (so the validation split is fixed
    once written) after checking its classes, seed and fraction and that every listed image exists; otherwise the
    split is written there.

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.
        datalist_json: where the split is written and later re-read; None keeps it in memory.
        seed: validation-split seed.
        val_fraction: fraction of each ``Training/`` class used for validation.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": class index}`` with
        classes ``glioma, meningioma, notumor, pituitary``.

    Raises:
        FileNotFoundError: ``dataset_dir``, ``Training``/``Testing``, a class folder or a listed image is missing
            (the message gives the expected layout and where to download).
        ValueError: a class folder holds no image, or the saved datalist was written for other settings.
    """
    root = os.path.abspath(dataset_dir)
    meta = {"classes": list(BTC_CLASSES), "seed": seed, "val_fraction": val_fraction}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"BTC not found: {dataset_dir!r} does not exist.\n{_layout(dataset_dir)}")
    if datalist_json and os.path.isfile(datalist_json):
        return load_saved_datalist(datalist_json, root, **meta)
    found = sorted(os.listdir(root))
    parts = {}
    for part in ("Training", "Testing"):
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"BTC folder {folder!r} is missing (found in {root}: {found[:20]}).\n{_layout(dataset_dir)}")
        try:
            parts[part] = list_class_folder(folder, BTC_CLASSES)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{e}\n{_layout(dataset_dir)}") from e
    out = split_datalist(parts["Training"], val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    out["test"] = sorted(parts["Testing"], key=lambda it: it["image"])
    if datalist_json:
        save_datalist(out, datalist_json, root, **meta)
    return out
