"""Unlabelled images (a datalist's ``unlabelled`` list): listed for training, saved and checked."""

import json

import numpy as np
import pytest
from PIL import Image

from monai_rd.data import check_datalist, training_items, unlabelled_splits
from monai_rd.data.datalist import load_saved_datalist
from monai_rd.data.unlabelled import loss_weight_end
from monai_rd.errors import DataCheckError, OptionError
from monai_rd.utils.constants import UNLABELLED

CLASSES = ["a", "b"]


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 5), value, np.uint8)).save(path)
    return str(path)


def _datalist(tmp_path):
    d = tmp_path / "img"
    return {
        "training": [{"image": _png(d / f"t{i}.png", 10 * i), "label": i % 2} for i in range(4)],
        "validation": [{"image": _png(d / "v0.png", 100), "label": 0}],
        "test": [{"image": _png(d / "s0.png", 200), "label": 1}],
        "unlabelled": [{"image": _png(d / f"u{i}.png", 150 + i)} for i in range(3)],
    }


def test_training_items_append_the_unlabelled_images_marked_unlabelled_only_when_used(tmp_path):
    dl = _datalist(tmp_path)
    items = training_items(dl, use=True, num_classes=2)
    assert items[:4] == dl["training"] and [it["label"] for it in items[4:]] == [UNLABELLED] * 3
    assert [it["image"] for it in items[4:]] == [it["image"] for it in dl["unlabelled"]]
    assert "label" not in dl["unlabelled"][0]  # the datalist itself is not changed
    assert training_items(dl, use=False, num_classes=2) == dl["training"]
    assert training_items({"training": dl["training"]}, use=True, num_classes=2) == dl["training"]
    multi = training_items(dl, use=True, num_classes=3, multi_label=True)
    assert multi[-1]["label"] == [float(UNLABELLED)] * 3
    assert unlabelled_splits(dl, True) == ["unlabelled"] and unlabelled_splits(dl, False) == []


def test_an_unlabelled_item_with_a_label_is_refused_naming_it(tmp_path):
    dl = _datalist(tmp_path)
    dl["unlabelled"][1]["label"] = 0
    with pytest.raises(ValueError, match=r"unlabelled\[1\] .*u1.png.* has a 'label'"):
        training_items(dl, use=True, num_classes=2)
    with pytest.raises(DataCheckError, match=r"unlabelled\[1\] .*u1.png: an unlabelled image has a 'label'"):
        check_datalist(dl, CLASSES, unlabelled_splits=["unlabelled"])


def test_check_datalist_reads_unlabelled_images_without_labels_and_refuses_a_test_image_among_them(tmp_path):
    """Catches an unlabelled image that is also a test image (a leak of the test split into training)."""
    dl = _datalist(tmp_path)
    summary = check_datalist(dl, CLASSES, unlabelled_splits=["unlabelled"])
    assert summary["num_items"]["unlabelled"] == 3 and "unlabelled" not in summary["absent_classes"]
    dl["unlabelled"].append({"image": _png(tmp_path / "copy_of_test.png", 200)})
    with pytest.raises(DataCheckError, match="copy_of_test.png") as err:
        check_datalist(dl, CLASSES, unlabelled_splits=["unlabelled"])
    assert "test" in str(err.value) and "unlabelled" in str(err.value)
    bad = _png(tmp_path / "empty_dir" / "x.png", 1)
    open(bad, "wb").close()  # an empty file among the unlabelled ones is named like any other
    dl["unlabelled"][-1] = {"image": bad}
    with pytest.raises(DataCheckError, match=r"unlabelled\[3\] .*x.png: is empty"):
        check_datalist(dl, CLASSES, unlabelled_splits=["unlabelled"])


def test_a_saved_datalist_keeps_its_unlabelled_list_with_absolute_paths(tmp_path):
    root = tmp_path / "data"
    for name in ("t0.png", "t1.png", "v.png", "s.png", "u.png"):
        _png(root / name, len(name))
    saved = {"classes": CLASSES, "training": [{"image": "t0.png", "label": 0}, {"image": "t1.png", "label": 1}],
             "validation": [{"image": "v.png", "label": 0}], "test": [{"image": "s.png", "label": 1}],
             "unlabelled": [{"image": "u.png"}]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(saved))
    out = load_saved_datalist(str(path), str(root), classes=CLASSES)
    assert out["unlabelled"] == [{"image": str(root / "u.png")}]
    saved["unlabelled"] = [{"path": "u.png"}]
    path.write_text(json.dumps(saved))
    with pytest.raises(DataCheckError, match="'unlabelled' must be a list of"):
        load_saved_datalist(str(path), str(root), classes=CLASSES)


@pytest.mark.parametrize("value, has_unlabelled, use, expected", [
    (None, True, True, 1.0),    # unset, unlabelled images trained on: held at 1
    ("null", True, True, 1.0),  # unset as the command line gives it
    (None, False, True, 0.0),   # no unlabelled list: decays to 0 as before
    (None, True, False, 0.0),   # --unlabelled false (or no teacher): as before
    ("0", True, True, 0.0),     # a set value wins, as text
    (0.25, False, True, 0.25),
])
def test_loss_weight_end_holds_the_schedule_only_when_unlabelled_images_are_trained_on(
        value, has_unlabelled, use, expected):
    """Catches the default holding α/β without unlabelled images (changing every run without them), ignoring a
    set value, or reading "0" as unset."""
    datalist = {"training": [], "unlabelled": [{"image": "u.png"}]} if has_unlabelled else {"training": []}
    assert loss_weight_end(value, "beta_end", datalist, use) == expected


@pytest.mark.parametrize("value", ["-1", "flase", float("nan")])
def test_loss_weight_end_refuses_a_bad_value_by_name(value):
    with pytest.raises(OptionError, match="--alpha_end"):
        loss_weight_end(value, "alpha_end", {"training": []}, True)
