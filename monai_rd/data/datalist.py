"""Datalists from class-folder image datasets, split by class (stratified) or by groups of related images."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_rd.data.finder import IMAGE_EXTENSIONS, find_images
from monai_rd.errors import DataCheckError, OptionError
from monai_rd.utils.constants import SPLITS, UNLABELLED_SPLIT
from monai_rd.utils.files import write_json_atomic

__all__ = [
    "IMAGE_EXTENSIONS",
    "NewDatalist",
    "list_class_folder",
    "load_json",
    "load_saved_datalist",
    "make_class_folder_datalist",
    "read_groups_csv",
    "read_split_file",
    "save_datalist",
    "split_datalist",
]



def load_json(path: str, what: str = "JSON file") -> Any:
    """Parse a JSON file, naming the file, line and column when it is not valid JSON.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"datalist"``).

    Returns:
        The parsed object.

    Raises:
        DataCheckError: the file is missing, unreadable or not valid JSON (with the position of the error).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataCheckError(f"{what} {path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise DataCheckError(
            f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): fix it, or delete it "
            "if it is a saved split, to re-split."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataCheckError(f"{what} {path} cannot be read ({e}).") from e


class NewDatalist(dict):
    """A split just made and not yet written: its ``save()`` writes it, and :func:`monai_rd.data.check_datalist`
    calls it once every file passed, so a failed data check leaves no datalist behind.

    Args:
        splits: the ``{split: items}`` datalist.
        save: writes it (called once).
    """

    def __init__(self, splits: Mapping[str, list[dict]], save: Callable[[], Any]) -> None:
        super().__init__(splits)
        self._save: Callable[[], Any] | None = save

    def save(self) -> None:
        """Write the split (once; later calls do nothing)."""
        if self._save is not None:
            self._save()
            self._save = None


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


# what to do when a saved split is not this run's: never "delete it", which may be a bundle's shipped split
_ANOTHER_SPLIT = (
    "pass --datalist_json <a new file, e.g. in your --ckpt_dir> to split {dataset_dir} anew (delete {path} only if "
    "it is a split you made and no longer want)"
)


def load_saved_datalist(datalist_json: str, dataset_dir: str, **expected) -> dict[str, list[dict]]:
    """Read a datalist written by :func:`save_datalist`, checking it still fits the dataset.

    Args:
        datalist_json: the file.
        dataset_dir: the dataset root its paths are relative to.
        expected: fields that must equal the recorded ones (e.g. ``classes=[...]``, ``seed=0``).

    Returns:
        The splits with absolute image paths, and the ``unlabelled`` list when the file has one.

    Raises:
        DataCheckError: the file is not valid JSON or not a saved datalist, a recorded field differs from
            ``expected``, or a split is absent or malformed (delete the file to re-split).
        FileNotFoundError: a listed image is missing (names its path).
    """
    saved = load_json(datalist_json, what="saved datalist")
    if not isinstance(saved, dict):
        raise DataCheckError(
            f"{datalist_json} holds a {type(saved).__name__}, not a saved datalist; delete it to re-split."
        )
    for key, value in expected.items():
        value = list(value) if isinstance(value, tuple) else value
        if saved.get(key) != value:
            raise DataCheckError(
                f"{datalist_json} was written with {key}={saved.get(key)!r}, but this run has {value!r}: it is the "
                f"split of another dataset or setting: "
                f"{_ANOTHER_SPLIT.format(dataset_dir=dataset_dir, path=datalist_json)}."
            )
    absent = [s for s in SPLITS if s not in saved]
    if absent:
        raise DataCheckError(f"{datalist_json} lacks the split(s) {absent}; delete it to re-split.")
    for s in SPLITS:
        items = saved[s]
        if not isinstance(items, list):
            bad = "is not a list"
        else:
            no_path = [
                i for i, it in enumerate(items) if not isinstance(it, dict) or not isinstance(it.get("image"), str)
            ]
            bad = f"item {no_path[0]} has no 'image' path" if no_path else None
        if bad:
            raise DataCheckError(f"{datalist_json}: split {s!r} {bad}; delete it to re-split.")
    # an optional list of images without labels (monai_rd.data.unlabelled), checked like a split
    splits = [*SPLITS, *([UNLABELLED_SPLIT] if UNLABELLED_SPLIT in saved else [])]
    if UNLABELLED_SPLIT in saved and (
        not isinstance(saved[UNLABELLED_SPLIT], list)
        or not all(isinstance(it, dict) and isinstance(it.get("image"), str) for it in saved[UNLABELLED_SPLIT])
    ):
        raise DataCheckError(
            f"{datalist_json}: {UNLABELLED_SPLIT!r} must be a list of {{'image': path}} items; fix or remove it."
        )
    root = os.path.abspath(dataset_dir)
    out = {s: [{**it, "image": os.path.join(root, it["image"])} for it in saved[s]] for s in splits}
    missing = [it["image"] for s in splits for it in out[s] if not os.path.isfile(it["image"])]
    if missing:
        total = sum(len(out[s]) for s in splits)
        raise FileNotFoundError(
            f"{len(missing)} of the {total} images listed in {datalist_json} are not under {root}, first: "
            f"{missing[0]}. If the datalist is the split of another dataset (e.g. a bundle's own), "
            f"{_ANOTHER_SPLIT.format(dataset_dir=root, path=datalist_json)}; if images were removed, restore them."
        )
    return out


def read_split_file(path: str) -> list[str]:
    """File names listed in a split file, one per line (surrounding white space and blank lines dropped).

    Args:
        path: the ``.txt`` split file.

    Returns:
        The names, in file order.

    Raises:
        ValueError: the file lists no name, or a name twice.
    """
    with open(path, encoding="utf-8-sig") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"split file {path} lists no image.")
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise ValueError(f"split file {path} lists {dup[:3]} more than once.")
    return names


def list_class_folder(
    dataset_dir: str,
    classes: Sequence[str],
    exclude: Sequence[str] = (),
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[dict]:
    """List ``dataset_dir/<class>/<image>`` files as ``{"image": path, "label": class index}``.

    Args:
        dataset_dir: root folder holding one sub-folder per class.
        classes: class folder names; the label is the position in this list.
        exclude: glob patterns of file names to skip (e.g. ``"*_mask*"`` for BUSI's masks).
        extensions: accepted file name endings (case-insensitive).

    Returns:
        Items sorted by path, with absolute image paths.

    Raises:
        FileNotFoundError: ``dataset_dir`` or a class folder is missing.
        ValueError: a class folder holds no image.
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset folder {dataset_dir!r} does not exist.")
    items: list[dict] = []
    seen: set = set()  # a file linked into two class folders is listed once
    for label, cls in enumerate(classes):
        folder = os.path.join(dataset_dir, cls)
        if not os.path.isdir(folder):
            folders = sorted(d for d in os.listdir(dataset_dir) if os.path.isdir(os.path.join(dataset_dir, d)))
            raise FileNotFoundError(
                f"class folder {folder!r} is missing; expected one folder per class {list(classes)} in "
                f"{dataset_dir!r}, found {folders}."
            )
        found = find_images(folder, extensions, exclude, recursive=False, seen=seen)
        if not found.items:
            left = found.describe_left_out()
            raise ValueError(
                f"class folder {folder!r} holds no image with extension {tuple(extensions)} (nor a DICOM file)"
                + (f"; left out: {left}." if left else ".")
            )
        found.log("image")
        items += [{**it, "label": label} for it in found.items]
    return items


def _group_key(path: str, pattern: str, group_size: int) -> str:
    m = re.search(pattern, os.path.basename(path))
    if m is None:
        raise ValueError(f"file {path!r} does not match the group pattern {pattern!r}.")
    key = m.group(1) if m.groups() else m.group(0)
    return str(int(key) // group_size) if group_size > 1 else key


def read_groups_csv(path: str) -> dict[str, str]:
    """Read a ``file -> group`` table (e.g. image -> patient) from a CSV with the columns ``image`` and ``group``.

    ``image`` is a file name or a path; :func:`split_datalist` matches it against each item's path, then its file
    name. Other columns are ignored.

    Args:
        path: the CSV file.

    Returns:
        ``{image: group}``.

    Raises:
        DataCheckError: the file is missing, lacks a column, has an empty cell, or lists an image twice with
            different groups (names the line).
    """
    if not os.path.isfile(path):
        raise DataCheckError(f"groups CSV {path} does not exist.")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        absent = [c for c in ("image", "group") if c not in (reader.fieldnames or [])]
        if absent:
            raise DataCheckError(f"groups CSV {path} lacks the column(s) {absent} (its header: {reader.fieldnames}).")
        for line, row in enumerate(reader, start=2):
            image, group = (row["image"] or "").strip(), (row["group"] or "").strip()
            if not image or not group:
                raise DataCheckError(f"groups CSV {path}, line {line}: empty image or group in {row}.")
            if out.setdefault(image, group) != group:
                raise DataCheckError(
                    f"groups CSV {path}, line {line}: {image!r} is in groups {out[image]!r} and {group!r}."
                )
    if not out:
        raise DataCheckError(f"groups CSV {path} lists no image.")
    return out


def _group_keys(items: Sequence[dict], groups: Mapping[str, Any] | Callable[[str], Any]) -> list[str]:
    """Each item's group: ``groups(path)``, or ``groups[path]``, else ``groups[file name]``."""
    if callable(groups):
        return [str(groups(it["image"])) for it in items]
    keys, missing = [], []
    for it in items:
        key = groups.get(it["image"], groups.get(os.path.basename(it["image"])))
        if key is None:
            missing.append(it["image"])
        keys.append(str(key))
    if missing:
        raise DataCheckError(
            f"{len(missing)} of {len(items)} images have no group, first: {missing[:3]}; list every image (by path or "
            "file name) in the groups table."
        )
    return keys


def _assign(n: int, fractions: Sequence[float]) -> list[int]:
    """Interleave ``n`` ordered units over splits so every prefix follows the fractions (largest deficit first)."""
    counts = [0] * len(fractions)
    out = []
    for i in range(n):
        deficits = [f * (i + 1) - c for f, c in zip(fractions, counts)]
        k = int(np.argmax(deficits))
        counts[k] += 1
        out.append(k)
    return out


def split_datalist(
    items: Sequence[dict],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group_pattern: str | None = None,
    group_size: int = 1,
    shuffle_groups: bool = True,
    groups: Mapping[str, Any] | Callable[[str], Any] | None = None,
) -> dict[str, list[dict]]:
    """Split items into training/validation/test.

    Without ``group_pattern`` or ``groups`` the split is stratified by label with a seeded shuffle per class:
    images of one patient can then land in several splits. With either, all items of one group land in one
    split, so related images (same patient, neighbouring slices) never straddle splits; the fractions are then
    fractions of groups, not stratified by label. The group key is the pattern's first capture group applied to
    the file name (integer-divided by ``group_size`` when > 1: e.g. ``r"_z(\\d+)_"`` with 10 puts blocks of 10
    slices together), or what ``groups`` gives for the item's path.

    Args:
        items: ``{"image", "label"}`` dicts.
        val_fraction: fraction for validation.
        test_fraction: fraction for test.
        seed: RNG seed.
        group_pattern: regex applied to the file name that yields the group key.
        group_size: integer keys are bucketed by this size.
        shuffle_groups: shuffle groups with ``seed`` (True) or interleave them in key order (False, which
            spreads ordered groups such as slice blocks evenly over the splits).
        groups: the group of each image (e.g. its patient): a callable ``path -> key``, or a mapping from the
            image path or file name to its key (:func:`read_groups_csv` reads one from a CSV).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        ValueError: fractions out of range, or a file name does not match ``group_pattern``.
        OptionError: both ``group_pattern`` and ``groups`` are given.
        DataCheckError: ``groups`` is a mapping that lacks an image (names the first ones).
    """
    if group_pattern is not None and groups is not None:
        raise OptionError("pass group_pattern or groups to split_datalist, not both.")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum < 1.")
    fr = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    if group_pattern is None and groups is None:
        by_label: dict[int, list[dict]] = {}
        for it in items:
            by_label.setdefault(
                int(np.asarray(it["label"]).argmax()) if np.ndim(it["label"]) else int(it["label"]), []
            ).append(it)
        for label in sorted(by_label):
            group = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
            n_val = int(round(len(group) * val_fraction))
            n_test = int(round(len(group) * test_fraction))
            out["validation"] += group[:n_val]
            out["test"] += group[n_val : n_val + n_test]
            out["training"] += group[n_val + n_test :]
    else:
        item_keys = (
            _group_keys(items, groups)
            if groups is not None
            else [_group_key(it["image"], group_pattern, group_size) for it in items]
        )
        members: dict[str, list[dict]] = {}
        for it, key in zip(items, item_keys):
            members.setdefault(key, []).append(it)
        keys = sorted(members, key=lambda k: (len(k), k))
        if shuffle_groups:
            keys = [keys[i] for i in rng.permutation(len(keys))]
        for key, split in zip(keys, _assign(len(keys), fr)):
            out[SPLITS[split]] += members[key]
    for s in SPLITS:
        out[s].sort(key=lambda it: it["image"])
    return out


def make_class_folder_datalist(
    dataset_dir: str,
    classes: Sequence[str],
    datalist_json: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    exclude: Sequence[str] = (),
    group_pattern: str | None = None,
    group_size: int = 1,
    shuffle_groups: bool = True,
    missing_message: str | None = None,
) -> dict[str, list[dict]]:
    """List a class-folder dataset, split it, and keep the split in a datalist JSON once its files are checked.

    If ``datalist_json`` exists it is read instead (so a split is fixed once written), after checking that
    every file in it still exists and that its classes match. Paths in the JSON are relative to
    ``dataset_dir``. A new split is returned as a :class:`NewDatalist` and written to ``datalist_json`` only when
    :func:`monai_rd.data.check_datalist` passes it (every bundle's ``initialize`` checks it), or by its ``save()``:
    a split with a bad file is never kept, so fixing the data and running again splits again.

    Args:
        dataset_dir: folder of class folders.
        classes: class names, in label order.
        datalist_json: where the split is written (and read from on later runs); None keeps it in memory.
        val_fraction: fraction for validation.
        test_fraction: fraction for test.
        seed: split seed.
        exclude: file-name glob patterns to skip.
        group_pattern: see :func:`split_datalist`.
        group_size: see :func:`split_datalist`.
        shuffle_groups: see :func:`split_datalist`.
        missing_message: message of the error raised when ``dataset_dir`` is missing (e.g. where to get it).

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": int}`` (a
        :class:`NewDatalist` when the split was just made).

    Raises:
        FileNotFoundError: the dataset folder, a class folder, or a file listed in the JSON is missing.
        ValueError: the JSON's classes differ from ``classes``.
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(missing_message or f"dataset folder {dataset_dir!r} does not exist.")
    if datalist_json and os.path.isfile(datalist_json):
        return load_saved_datalist(datalist_json, dataset_dir, classes=list(classes))
    items = list_class_folder(dataset_dir, classes, exclude=exclude)
    out = split_datalist(items, val_fraction, test_fraction, seed, group_pattern, group_size, shuffle_groups)
    if datalist_json:
        meta = {"classes": list(classes), "seed": seed}
        return NewDatalist(out, lambda: save_datalist(out, datalist_json, dataset_dir, **meta))
    return out
