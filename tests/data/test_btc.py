"""BTC datalist: Testing/ is the test split, a stratified seeded validation split of Training/ kept in a JSON."""

import json
import os
import re

import pytest

from monai_rd.data import BTC_CLASSES, btc_datalist

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
    with pytest.raises(ValueError, match="delete it to re-split"):
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
