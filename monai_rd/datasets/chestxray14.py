"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 14 findings, multi-label, with the official ``train_val_list.txt`` /
``test_list.txt`` split and a validation split of train_val made by patient."""

from __future__ import annotations

import csv
import os
import warnings

import numpy as np

from monai_rd.data.datalist import load_saved_datalist, read_split_file, save_datalist
from monai_rd.datasets.spec import DatasetSpec

__all__ = ["CHESTXRAY14_SPEC", "CHESTXRAY14_FINDINGS", "chestxray14_datalist", "parse_finding_labels"]

# the order of Wang et al. 2017 (and CheXNet)
CHESTXRAY14_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
CSV_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")

CHESTXRAY14_LAYOUT = """expected layout (NIH ChestX-ray14, from https://nihcc.app.box.com/v/ChestXray-NIHCC or
https://www.kaggle.com/datasets/nih-chest-xrays/data):
  {root}/Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv; columns Image Index, Finding Labels, \
Patient ID, ...)
  {root}/train_val_list.txt           (one image name per line)
  {root}/test_list.txt
  {root}/images/00000001_000.png ...  (the NIH tarballs images_001..012.tar.gz unpacked in place)
    or {root}/images_001/images/*.png ... images_012/images/*.png (the Kaggle layout)
and pass --dataset_dir <that folder>."""
CHESTXRAY14_SPEC = DatasetSpec("ChestX-ray14", CHESTXRAY14_FINDINGS, CHESTXRAY14_LAYOUT)



def parse_finding_labels(text: str, findings=CHESTXRAY14_FINDINGS) -> list[float]:
    """``"Effusion|Mass"`` -> multi-hot floats over ``findings``; ``"No Finding"`` -> all zeros.

    Raises:
        ValueError: an unknown finding name.
    """
    names = [t.strip() for t in text.split("|") if t.strip()]
    if names == [NO_FINDING]:
        return [0.0] * len(findings)
    unknown = [n for n in names if n not in findings]
    if unknown or not names:
        raise ValueError(
            f"unknown finding(s) {unknown or [text]}; expected {NO_FINDING!r} or names from {list(findings)}."
        )
    return [1.0 if f in names else 0.0 for f in findings]


def _image_index(root: str) -> dict[str, str]:
    dirs = [os.path.join(root, "images")]
    for d in sorted(os.listdir(root)):
        if d.startswith("images_") and os.path.isdir(os.path.join(root, d)):
            inner = os.path.join(root, d, "images")
            dirs.append(inner if os.path.isdir(inner) else os.path.join(root, d))
    index: dict[str, str] = {}
    for d in dirs:
        if os.path.isdir(d):
            with os.scandir(d) as it:
                for e in it:
                    if e.name.lower().endswith(".png"):
                        index.setdefault(e.name, os.path.join(d, e.name))
    return index


def _read_entries(csv_path: str) -> dict[str, tuple[list[float], str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}: column(s) {missing} missing; found {header}. Expected NIH's Data_Entry_2017.csv."
            )
        entries = {}
        for line, row in enumerate(reader, start=2):
            try:
                labels = parse_finding_labels(row["Finding Labels"] or "")
            except ValueError as e:
                raise ValueError(f"{csv_path}, line {line} ({row['Image Index']}): {e}") from e
            entries[row["Image Index"].strip()] = (labels, str(row["Patient ID"]).strip())
    return entries


def _patient_split(
    items: list[dict], patients: list[str], val_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Whole patients, in a seeded random order, go to validation until it holds ``val_fraction`` of the images."""
    counts: dict[str, int] = {}
    for p in patients:
        counts[p] = counts.get(p, 0) + 1
    order = sorted(counts, key=lambda p: (len(p), p))
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    target, n_val, val_patients = val_fraction * len(items), 0, set()
    for p in order:
        if n_val >= target:
            break
        val_patients.add(p)
        n_val += counts[p]
    train = [it for it, p in zip(items, patients) if p not in val_patients]
    val = [it for it, p in zip(items, patients) if p in val_patients]
    return train, val


def chestxray14_datalist(
    dataset_dir: str,
    datalist_json: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    skip_missing: bool = False,
) -> dict[str, list[dict]]:
    """ChestX-ray14 as multi-label datalists: official test list, and train_val split by patient.

    ``test_list.txt`` is the test split. The images of ``train_val_list.txt`` are split into training and
    validation by the CSV's ``Patient ID``: whole patients (seeded order) go to validation until it holds
    ``val_fraction`` of the images, so no patient is in both. When ``datalist_json`` exists it is read instead,
    after checking its findings, seed and fraction and that every listed image exists; otherwise it is written.

    Args:
        dataset_dir: folder with the CSV, the two lists and the images (see the expected layout in errors).
        datalist_json: where the split is written and later re-read; None keeps it in memory.
        seed: validation-split seed.
        val_fraction: fraction of train_val images (whole patients) used for validation.
        skip_missing: drop listed images that are not on disk (with a warning) instead of stopping, e.g. when
            only some of the 12 image archives were downloaded.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": 14 floats (multi-hot
        in the order of CHESTXRAY14_FINDINGS)}``.

    Raises:
        FileNotFoundError: the folder, the CSV, a list file, the image folders or a listed image is missing.
        ValueError: a CSV column is missing, a finding is unknown, a listed image has no CSV row, or the saved
            datalist was written for other settings.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    root = os.path.abspath(dataset_dir)
    if not os.path.isdir(root):
        raise CHESTXRAY14_SPEC.not_found(dataset_dir)
    meta = {"findings": list(CHESTXRAY14_FINDINGS), "seed": seed, "val_fraction": val_fraction}
    if datalist_json and os.path.isfile(datalist_json):
        return load_saved_datalist(datalist_json, root, **meta)
    found = sorted(os.listdir(root))[:20]
    csv_path = next((os.path.join(root, n) for n in CSV_NAMES if os.path.isfile(os.path.join(root, n))), None)
    if csv_path is None:
        raise CHESTXRAY14_SPEC.missing(
            f"ChestX-ray14 label file {CSV_NAMES[0]} (or {CSV_NAMES[1]}) is missing in {root} (found {found}).",
            dataset_dir,
        )
    lists = {}
    for split, name in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise CHESTXRAY14_SPEC.missing(f"ChestX-ray14 split file {path!r} is missing (found {found}).", dataset_dir)
        lists[split] = read_split_file(path)
    entries = _read_entries(csv_path)
    index = _image_index(root)
    if not index:
        raise CHESTXRAY14_SPEC.missing(
            f"no PNG image found in {os.path.join(root, 'images')} or {os.path.join(root, 'images_*', 'images')} "
            f"(found in {root}: {found}).",
            dataset_dir,
        )
    splits: dict[str, tuple[list[dict], list[str]]] = {}
    for split, names in lists.items():
        no_row = [n for n in names if n not in entries]
        if no_row:
            raise ValueError(f"{len(no_row)} images of {split}_list have no row in {csv_path}, first: {no_row[0]}.")
        missing = [n for n in names if n not in index]
        if missing:
            first = os.path.join(root, "images", missing[0])
            msg = f"{len(missing)} of {len(names)} images of the {split} list are not on disk, first: {first}."
            if not skip_missing:
                raise CHESTXRAY14_SPEC.missing(
                    f"{msg} Unpack all image archives, or pass skip_missing=True.", dataset_dir
                )
            warnings.warn(f"{msg} Skipped (skip_missing=True).", stacklevel=2)
        kept = [n for n in names if n in index]
        splits[split] = ([{"image": index[n], "label": entries[n][0]} for n in kept], [entries[n][1] for n in kept])
    shared = set(splits["train_val"][1]) & set(splits["test"][1])
    if shared:
        warnings.warn(
            f"{len(shared)} patients are in both train_val_list and test_list (e.g. {sorted(shared)[0]}); the "
            "official lists are patient-disjoint.",
            stacklevel=2,
        )
    train, val = _patient_split(*splits["train_val"], val_fraction=val_fraction, seed=seed)
    out = {
        "training": sorted(train, key=lambda it: it["image"]),
        "validation": sorted(val, key=lambda it: it["image"]),
        "test": sorted(splits["test"][0], key=lambda it: it["image"]),
    }
    if datalist_json:
        save_datalist(out, datalist_json, root, **meta)
    return out
