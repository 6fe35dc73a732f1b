"""ISIC 2018 Task 3 datalist: official splits from the ground-truth CSVs, clear errors on a wrong layout."""

import csv
import json
import os
import re

import pytest

from monai_rd.datasets import ISIC2018_CLASSES, isic2018_datalist

SPLITS = {"training": "Training", "validation": "Validation", "test": "Test"}


def _make(root, per_class=(2, 1, 1)):
    n = 24306
    for (_split, name), k in zip(SPLITS.items(), per_class):
        in_dir = root / f"ISIC2018_Task3_{name}_Input"
        gt_dir = root / f"ISIC2018_Task3_{name}_GroundTruth"
        in_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        rows = [["image", *ISIC2018_CLASSES]]
        for c in range(len(ISIC2018_CLASSES)):
            for _ in range(k):
                image_id = f"ISIC_{n:07d}"
                n += 1
                (in_dir / f"{image_id}.jpg").write_bytes(b"")
                rows.append([image_id] + ["1.0" if j == c else "0.0" for j in range(7)])
        with open(gt_dir / f"ISIC2018_Task3_{name}_GroundTruth.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def _gt(root, name):
    return root / f"ISIC2018_Task3_{name}_GroundTruth" / f"ISIC2018_Task3_{name}_GroundTruth.csv"


def test_official_splits_and_labels(tmp_path):
    root = _make(tmp_path / "ISIC2018")
    out = isic2018_datalist(str(root), str(tmp_path / "dl.json"))
    assert [len(out[s]) for s in SPLITS] == [14, 7, 7]
    for split, name in SPLITS.items():
        for it in out[split]:
            assert os.path.isabs(it["image"]) and f"ISIC2018_Task3_{name}_Input" in it["image"]
        assert sorted(it["label"] for it in out[split]) == sorted(
            c for c in range(7) for _ in range(len(out[split]) // 7)
        )
    # the label is the one-hot column: the first training image of each class is in the CSV's class order
    rows = list(csv.DictReader(open(_gt(root, "Training"))))
    by_id = {os.path.basename(it["image"])[:-4]: it["label"] for it in out["training"]}
    assert all(
        by_id[r["image"]] == ISIC2018_CLASSES.index(next(c for c in ISIC2018_CLASSES if r[c] == "1.0")) for r in rows
    )
    saved = json.load(open(tmp_path / "dl.json"))
    assert saved["classes"] == list(ISIC2018_CLASSES) and saved["split"] == "official"
    assert not os.path.isabs(saved["training"][0]["image"])


def test_missing_dataset_and_folders_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="challenge.isic-archive.com"):
        isic2018_datalist(str(tmp_path / "nowhere"))
    root = _make(tmp_path / "ISIC2018")
    os.rename(root / "ISIC2018_Task3_Validation_Input", root / "renamed")
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task3_Validation_Input") as e:
        isic2018_datalist(str(root))
    assert "ISIC2018_Task3_Training_GroundTruth.csv" in str(e.value)  # the expected layout is spelled out
    os.rename(root / "renamed", root / "ISIC2018_Task3_Validation_Input")
    os.remove(_gt(root, "Test"))
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task3_Test_GroundTruth.csv"):
        isic2018_datalist(str(root))


def test_bad_csv_and_missing_image(tmp_path):
    root = _make(tmp_path / "ISIC2018")
    gt = _gt(root, "Validation")
    text = gt.read_text()
    gt.write_text(text.replace("VASC", "VASCULAR", 1))
    with pytest.raises(ValueError, match=r"\['VASC'\] missing"):
        isic2018_datalist(str(root))
    lines = text.splitlines()
    lines[1] = lines[1].replace("0.0", "1.0", 1)  # two classes set
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="not one-hot"):
        isic2018_datalist(str(root))
    gt.write_text(text)
    victim = sorted((root / "ISIC2018_Task3_Test_Input").iterdir())[0]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=re.escape(str(victim))):
        isic2018_datalist(str(root))
