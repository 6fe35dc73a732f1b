"""COVID-CT datalist: the official split files, clear errors on a wrong layout."""

import json
import os
import re

import pytest

from monai_rd.datasets import COVID_CT_CLASSES, covid_ct_datalist

COUNTS = {"train": 3, "val": 2, "test": 1}


def _make(root):
    for cls, sub in (("CT_COVID", "COVID"), ("CT_NonCOVID", "NonCOVID")):
        (root / "Images-processed" / cls).mkdir(parents=True)
        (root / "Data-split" / sub).mkdir(parents=True)
        i = 0
        for split, k in COUNTS.items():
            names = []
            for _ in range(k):
                name = f"2020.03.{i:02d}.2003{i}-p3-{i}%{i}.png" if cls == "CT_COVID" else f"{i} ({i}).jpg"
                (root / "Images-processed" / cls / name).write_bytes(b"")
                names.append(name)
                i += 1
            # trailing spaces and a blank line, as hand-made lists have
            (root / "Data-split" / sub / f"{split}{cls}.txt").write_text("\n".join(n + " " for n in names) + "\n\n")
    return root


def test_official_split(tmp_path):
    root = _make(tmp_path / "COVID-CT")
    out = covid_ct_datalist(str(root), str(tmp_path / "dl.json"))
    assert [len(out[s]) for s in ("training", "validation", "test")] == [6, 4, 2]
    for it in out["training"]:
        cls = COVID_CT_CLASSES[it["label"]]
        assert os.path.isfile(it["image"]) and os.path.basename(os.path.dirname(it["image"])) == cls
    assert {it["label"] for it in out["test"]} == {0, 1}
    saved = json.load(open(tmp_path / "dl.json"))
    assert saved["classes"] == ["CT_COVID", "CT_NonCOVID"] and len(saved["validation"]) == 4


def test_wrong_layout_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="UCSD-AI4H/COVID-CT"):
        covid_ct_datalist(str(tmp_path / "nowhere"))
    root = _make(tmp_path / "COVID-CT")
    os.rename(root / "Images-processed" / "CT_NonCOVID", root / "elsewhere")
    (root / "Images-processed" / "CT_NonCOVID.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="unzip it"):
        covid_ct_datalist(str(root))
    os.rename(root / "elsewhere", root / "Images-processed" / "CT_NonCOVID")
    os.remove(root / "Data-split" / "NonCOVID" / "valCT_NonCOVID.txt")
    with pytest.raises(FileNotFoundError, match="valCT_NonCOVID.txt"):
        covid_ct_datalist(str(root))


def test_missing_image_and_overlapping_splits(tmp_path):
    root = _make(tmp_path / "COVID-CT")
    listed = (root / "Data-split" / "COVID" / "testCT_COVID.txt").read_text().split()[0]
    victim = root / "Images-processed" / "CT_COVID" / listed
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=re.escape(f"first: {victim}")):
        covid_ct_datalist(str(root))
    victim.write_bytes(b"")
    train_txt = root / "Data-split" / "COVID" / "trainCT_COVID.txt"
    train_txt.write_text(train_txt.read_text() + listed + "\n")
    with pytest.raises(ValueError, match="both the training and the test split"):
        covid_ct_datalist(str(root))
