"""ChestX-ray14 datalist: multi-hot labels, official test list, validation split of train_val by patient."""

import csv
import json
import os
import re

import pytest

from monai_rd.datasets import CHESTXRAY14_FINDINGS, chestxray14_datalist
from monai_rd.datasets.chestxray14 import parse_finding_labels

HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
          "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
LABELS = ["No Finding", "Effusion", "Cardiomegaly|Effusion", "Hernia|Mass|Nodule", "Infiltration"]


def _make(root, n_patients=20, n_test=4, kaggle=False):
    rows, train_val, test = [], [], []
    for p in range(1, n_patients + 1):
        for f in range(1 + p % 3):  # 1 to 3 images per patient
            name = f"{p:08d}_{f:03d}.png"
            folder = root / (f"images_{1 + p % 2:03d}/images" if kaggle else "images")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"")
            rows.append([name, LABELS[(p + f) % len(LABELS)], f, p, 40, "F", "PA", 2500, 2048, 0.143, 0.143, ""])
            (test if p > n_patients - n_test else train_val).append(name)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER] + rows)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root, rows, train_val, test


def _patient(item):
    return int(os.path.basename(item["image"])[:8])


def test_parse_finding_labels():
    assert parse_finding_labels("No Finding") == [0.0] * 14
    y = parse_finding_labels("Effusion|Hernia")
    assert y[CHESTXRAY14_FINDINGS.index("Effusion")] == 1.0 and y[13] == 1.0 and sum(y) == 2
    with pytest.raises(ValueError, match="Pneumonitis"):
        parse_finding_labels("Effusion|Pneumonitis")


@pytest.mark.parametrize("kaggle", [False, True], ids=["nih_images", "kaggle_images_0xx"])
def test_multi_hot_and_patient_split(tmp_path, kaggle):
    root, rows, train_val, test = _make(tmp_path / "cxr", kaggle=kaggle)
    dl = tmp_path / "dl.json"
    out = chestxray14_datalist(str(root), str(dl), seed=1, val_fraction=0.25)
    assert len(out["training"]) + len(out["validation"]) == len(train_val)
    assert sorted(os.path.basename(it["image"]) for it in out["test"]) == sorted(test)
    assert all(os.path.isfile(it["image"]) for s in out for it in out[s])
    by_name = {r[0]: r[1] for r in rows}
    for it in out["training"] + out["validation"] + out["test"]:
        assert it["label"] == parse_finding_labels(by_name[os.path.basename(it["image"])])
        assert len(it["label"]) == 14
    assert max(sum(it["label"]) for it in out["training"]) == 3  # multi-hot
    train_p, val_p = {_patient(i) for i in out["training"]}, {_patient(i) for i in out["validation"]}
    assert val_p and not train_p & val_p  # no patient straddles training and validation
    assert 0.25 <= len(out["validation"]) / len(train_val) < 0.25 + 3 / len(train_val)
    assert chestxray14_datalist(str(root), None, seed=1, val_fraction=0.25) == out
    assert {
        _patient(i) for i in chestxray14_datalist(str(root), None, seed=2, val_fraction=0.25)["validation"]
    } != val_p
    saved = json.load(open(dl))
    assert saved["findings"] == list(CHESTXRAY14_FINDINGS) and saved["val_fraction"] == 0.25
    assert chestxray14_datalist(str(root), str(dl), seed=1, val_fraction=0.25) == out  # re-read
    with pytest.raises(ValueError, match="was written with val_fraction=0.25.*a split you made and no longer want"):
        chestxray14_datalist(str(root), str(dl), seed=1, val_fraction=0.1)


def test_wrong_layout_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="nihcc.app.box.com"):
        chestxray14_datalist(str(tmp_path / "nowhere"))
    root, rows, train_val, test = _make(tmp_path / "cxr")
    os.remove(root / "test_list.txt")
    with pytest.raises(FileNotFoundError, match="test_list.txt"):
        chestxray14_datalist(str(root))
    (root / "test_list.txt").write_text("\n".join(test))
    csv_text = (root / "Data_Entry_2017.csv").read_text()
    (root / "Data_Entry_2017.csv").write_text(csv_text.replace("Patient ID", "Patient", 1))
    with pytest.raises(ValueError, match="Patient ID"):
        chestxray14_datalist(str(root))
    (root / "Data_Entry_2017.csv").write_text(csv_text.replace("Infiltration", "Infiltrate"))
    with pytest.raises(ValueError, match="Infiltrate"):
        chestxray14_datalist(str(root))
    (root / "Data_Entry_2017.csv").write_text(csv_text)
    os.rename(root / "images", root / "pngs")
    with pytest.raises(FileNotFoundError, match="no PNG image"):
        chestxray14_datalist(str(root))


def test_missing_image_stops_or_is_skipped(tmp_path):
    root, rows, train_val, test = _make(tmp_path / "cxr")
    victim = root / "images" / test[0]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=re.escape(str(victim))):
        chestxray14_datalist(str(root))
    with pytest.warns(UserWarning, match="1 of"):
        out = chestxray14_datalist(str(root), skip_missing=True)
    assert len(out["test"]) == len(test) - 1
