"""BTC datalist: Testing/ is the test split, a stratified seeded validation split of Training/ kept in a JSON."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from monai_rd.data import check_datalist
from monai_rd.datasets import BTC_CLASSES, btc_datalist
from monai_rd.errors import DataCheckError

ABBREV = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}


def _make(root, n_train=10, n_test=2):
    for part, prefix, k in (("Training", "Tr", n_train), ("Testing", "Te", n_test)):
        for cls in BTC_CLASSES:
            (root / part / cls).mkdir(parents=True)
            for i in range(k):
                (root / part / cls / f"{prefix}-{ABBREV[cls]}_{i:04d}.jpg").write_bytes(b"")
    return root


def test_split_is_stratified_seeded_and_kept(tmp_path):
    root = _make(tmp_path / "btc")
    dl = tmp_path / "models" / "datalist.json"
    out = btc_datalist(str(root), str(dl), seed=3, val_fraction=0.2)
    assert [len(out[s]) for s in ("training", "validation", "test")] == [32, 8, 8]
    for label in range(4):
        assert sum(it["label"] == label for it in out["validation"]) == 2
    assert all("/Testing/" in it["image"] for it in out["test"])
    train_paths = {it["image"] for it in out["training"]}
    assert train_paths.isdisjoint(it["image"] for it in out["validation"])
    assert out == btc_datalist(str(root), None, seed=3, val_fraction=0.2)  # seeded: same split again
    assert out["validation"] != btc_datalist(str(root), None, seed=4, val_fraction=0.2)["validation"]
    saved = json.load(open(dl))
    assert saved["classes"] == list(BTC_CLASSES) and saved["seed"] == 3
    # later runs read the saved split: a new training image does not move anything
    (root / "Training" / "glioma" / "Tr-gl_9999.jpg").write_bytes(b"")
    assert btc_datalist(str(root), str(dl), seed=3, val_fraction=0.2) == out
    with pytest.raises(ValueError, match="was written with seed=3.*a split you made and no longer want"):
        btc_datalist(str(root), str(dl), seed=4, val_fraction=0.2)
    victim = out["validation"][0]["image"]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=re.escape(victim)):
        btc_datalist(str(root), str(dl), seed=3, val_fraction=0.2)


def test_wrong_layout_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="masoudnickparvar/brain-tumor-mri-dataset"):
        btc_datalist(str(tmp_path / "nowhere"))
    root = _make(tmp_path / "btc")
    os.rename(root / "Testing", root / "Test")
    with pytest.raises(FileNotFoundError, match="Testing") as e:
        btc_datalist(str(root))
    assert "Test" in str(e.value) and "Training/glioma" in str(e.value)
    os.rename(root / "Test", root / "Testing")
    os.rename(root / "Training" / "notumor", root / "Training" / "no_tumor")  # the older dataset's naming
    with pytest.raises(FileNotFoundError, match="notumor") as e:
        btc_datalist(str(root))
    assert "no_tumor" in str(e.value)


def test_split_by_patient_with_a_groups_csv(tmp_path):
    root = _make(tmp_path / "btc", n_train=13)
    # the Kaggle names hold no patient id: a table gives it (here 4 to 5 slices per patient, interleaved)
    rows = ["image,group"]
    for cls in BTC_CLASSES:
        rows += [f"Tr-{ABBREV[cls]}_{i:04d}.jpg,{cls}-patient{i % 3}" for i in range(13)]
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    patient = dict(r.split(",") for r in rows[1:])
    dl = tmp_path / "models" / "datalist.json"
    out = btc_datalist(str(root), str(dl), seed=0, val_fraction=0.25, groups=str(csv_path))
    sides = {}
    for split in ("training", "validation"):
        for it in out[split]:
            sides.setdefault(patient[os.path.basename(it["image"])], set()).add(split)
    assert len(sides) == 12 and all(len(v) == 1 for v in sides.values())
    assert sum(v == {"validation"} for v in sides.values()) == 3  # a quarter of the patients
    assert len(out["test"]) == 8
    assert json.load(open(dl))["split_by"] == "group"
    assert btc_datalist(str(root), str(dl), seed=0, val_fraction=0.25, groups=str(csv_path)) == out
    # by image, slices of one patient do land on both sides: the leak the groups remove
    by_image = btc_datalist(str(root), None, seed=0, val_fraction=0.25)
    mixed = {patient[os.path.basename(it["image"])] for it in by_image["validation"]} & {
        patient[os.path.basename(it["image"])] for it in by_image["training"]
    }
    assert mixed
    # a split saved by image is not silently reused once patients are known
    by_image_json = tmp_path / "by_image.json"
    btc_datalist(str(root), str(by_image_json), seed=0, val_fraction=0.25)
    refusal = r"written with split_by='image', but this run has 'group'.*pass --datalist_json"
    with pytest.raises(DataCheckError, match=refusal):
        btc_datalist(str(root), str(by_image_json), seed=0, val_fraction=0.25, groups=str(csv_path))
    saved = json.load(open(by_image_json))
    del saved["split_by"]  # written before splits recorded how they were made
    by_image_json.write_text(json.dumps(saved))
    with pytest.raises(DataCheckError, match=r"written with split_by=None, but this run has 'group'"):
        btc_datalist(str(root), str(by_image_json), seed=0, val_fraction=0.25, groups=str(csv_path))
    csv_path.write_text("\n".join(rows[:-1]) + "\n")  # the last pituitary slice has no patient
    with pytest.raises(DataCheckError, match=r"1 of 52 images have no group, first: .*Tr-pi_0012.jpg"):
        btc_datalist(str(root), None, groups=str(csv_path))


def test_duplicate_between_training_and_testing_is_refused(tmp_path):
    root = _make(tmp_path / "btc", n_train=4, n_test=1)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    leaked = root / "Training" / "glioma" / "Tr-gl_0003.jpg"
    shutil.copy(leaked, root / "Testing" / "glioma" / "Te-gl_0000.jpg")  # the same image under another name
    out = btc_datalist(str(root), None, seed=0, val_fraction=0.25)
    with pytest.raises(DataCheckError, match=r"the same pixels in (training|validation) and test") as e:
        check_datalist(out, BTC_CLASSES)
    assert str(leaked) in str(e.value) and str(root / "Testing" / "glioma" / "Te-gl_0000.jpg") in str(e.value)
    assert str(e.value).startswith("1 problem(s)")
