"""ISIC 2018 Task 3 (lesion diagnosis; HAM10000 training set): 7 classes, the official training/validation/test
images and ground-truth CSVs (Codella et al. 2019; Tschandl et al., Sci. Data 2018)."""

from __future__ import annotations

import csv
import os

from monai_rd.data.datalist import save_datalist
from monai_rd.datasets.spec import DatasetSpec

__all__ = [
    "ISIC2018_SPEC",
    "ISIC2018_CLASSES",
    "ISIC2018_SPLIT_NAMES",
    "isic2018_datalist",
    "read_isic2018_ground_truth",
]

ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# datalist split -> the name ISIC uses in its folder and file names
ISIC2018_SPLIT_NAMES = {"training": "Training", "validation": "Validation", "test": "Test"}

ISIC2018_LAYOUT = """expected layout (the official ISIC 2018 Task 3 downloads, each zip unpacked in place):
  {root}/ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...
  {root}/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
  {root}/ISIC2018_Task3_Validation_Input/*.jpg
  {root}/ISIC2018_Task3_Validation_GroundTruth/ISIC2018_Task3_Validation_GroundTruth.csv
  {root}/ISIC2018_Task3_Test_Input/*.jpg
  {root}/ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv
Each CSV has the columns image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (one-hot). Download all six 'Task 3' zips from
https://challenge.isic-archive.com/data/#2018 and pass --dataset_dir <the folder holding them>."""
ISIC2018_SPEC = DatasetSpec("ISIC 2018", ISIC2018_CLASSES, ISIC2018_LAYOUT)



def read_isic2018_ground_truth(csv_path: str, classes=ISIC2018_CLASSES) -> list[tuple[str, int]]:
    """Read an ISIC 2018 Task 3 ground-truth CSV.

    Args:
        csv_path: ``ISIC2018_Task3_<Split>_GroundTruth.csv``.
        classes: the diagnosis columns, in label order.

    Returns:
        ``(image id, class index)`` per row, in file order.

    Raises:
        ValueError: a column is missing, a value is not a number, or a row is not one-hot (names the row).
    """
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in ("image", *classes) if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}: column(s) {missing} missing; found {header}. The Task 3 ground truth has the columns "
                f"image,{','.join(classes)} (did you pass a Task 1/2 or ISIC 2019 file?)."
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                values = [float(row[c]) for c in classes]
            except (TypeError, ValueError) as e:
                raise ValueError(f"{csv_path}, line {line}: non-numeric class value in {row}.") from e
            hot = [i for i, v in enumerate(values) if v == 1.0]
            if len(hot) != 1 or sum(values) != 1.0:
                raise ValueError(
                    f"{csv_path}, line {line}: image {row['image']!r} is not one-hot over {list(classes)}: {values}."
                )
            rows.append((row["image"].strip(), hot[0]))
    if not rows:
        raise ValueError(f"{csv_path} holds no image row.")
    return rows


def isic2018_datalist(
    dataset_dir: str, datalist_json: str | None = None, seed: int = 0, image_ext: str = ".jpg"
) -> dict[str, list[dict]]:
    """The official ISIC 2018 Task 3 training/validation/test splits.

    The splits are the challenge's own, so nothing is random (``seed`` is accepted for a uniform signature and
    recorded). The ground-truth CSVs are the source of truth on every call; ``datalist_json``, when given, is
    (re)written as a record of what was used, with paths relative to ``dataset_dir``.

    Args:
        dataset_dir: folder holding the six unpacked ``ISIC2018_Task3_*`` folders.
        datalist_json: where to write the resulting datalist; None writes nothing.
        seed: unused (official splits); written to the JSON.
        image_ext: image file extension.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": class index}``.

    Raises:
        FileNotFoundError: ``dataset_dir``, an input folder, a CSV, or a listed image is missing (the message
            gives the expected layout and where to download; missing images are named by path).
        ValueError: a CSV lacks a column or has a row that is not one-hot.
    """
    root = os.path.abspath(dataset_dir)
    if not os.path.isdir(root):
        raise ISIC2018_SPEC.not_found(dataset_dir)
    out: dict[str, list[dict]] = {}
    for split, name in ISIC2018_SPLIT_NAMES.items():
        in_dir = os.path.join(root, f"ISIC2018_Task3_{name}_Input")
        gt_csv = os.path.join(root, f"ISIC2018_Task3_{name}_GroundTruth", f"ISIC2018_Task3_{name}_GroundTruth.csv")
        for path, kind in ((in_dir, "folder"), (gt_csv, "file")):
            exists = os.path.isdir(path) if kind == "folder" else os.path.isfile(path)
            if not exists:
                found = sorted(os.listdir(root))[:20]
                raise ISIC2018_SPEC.missing(
                    f"ISIC 2018 {split} {kind} {path!r} is missing (found in {root}: {found}).", dataset_dir
                )
        items = [
            {"image": os.path.join(in_dir, image_id + image_ext), "label": label}
            for image_id, label in read_isic2018_ground_truth(gt_csv)
        ]
        missing = [it["image"] for it in items if not os.path.isfile(it["image"])]
        if missing:
            raise ISIC2018_SPEC.missing(
                f"{len(missing)} of {len(items)} images listed in {gt_csv} are missing, first: {missing[0]}. "
                f"Unpack ISIC2018_Task3_{name}_Input.zip completely.",
                dataset_dir,
            )
        out[split] = sorted(items, key=lambda it: it["image"])
    if datalist_json:
        save_datalist(out, datalist_json, root, classes=list(ISIC2018_CLASSES), seed=seed, split="official")
    return out
