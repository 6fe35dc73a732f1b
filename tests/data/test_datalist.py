import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from monai_rd.data import list_class_folder, list_images, make_class_folder_datalist, split_datalist


def _folder(tmp_path, counts=None, names=lambda c, i: f"{c}_{i:03d}.png"):
    counts = counts or {"a": 20, "b": 10, "c": 30}
    for c, n in counts.items():
        (tmp_path / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / c / names(c, i))
    return tmp_path


def test_stratified_split_keeps_class_fractions_and_is_seeded(tmp_path):
    items = list_class_folder(str(_folder(tmp_path)), ["a", "b", "c"])
    s0 = split_datalist(items, 0.2, 0.1, seed=0)
    for label, n in enumerate([20, 10, 30]):
        assert sum(i["label"] == label for i in s0["validation"]) == round(0.2 * n)
        assert sum(i["label"] == label for i in s0["test"]) == round(0.1 * n)
    all_paths = [i["image"] for s in s0.values() for i in s]
    assert len(all_paths) == len(set(all_paths)) == 60
    assert s0 == split_datalist(items, 0.2, 0.1, seed=0)
    assert s0 != split_datalist(items, 0.2, 0.1, seed=1)


def test_grouped_split_never_straddles_groups(tmp_path):
    folder = _folder(tmp_path, {"a": 40, "b": 40}, names=lambda c, i: f"{c}_z{i:03d}_x.png")
    items = list_class_folder(str(folder), ["a", "b"])
    out = split_datalist(items, 0.2, 0.2, group_pattern=r"_z(\d+)_", group_size=5, shuffle_groups=False)
    blocks = {s: {int(re.search(r"_z(\d+)_", i["image"]).group(1)) // 5 for i in out[s]} for s in out}
    assert not (blocks["training"] & blocks["validation"]) and not (blocks["training"] & blocks["test"])
    assert not (blocks["validation"] & blocks["test"])
    assert blocks["validation"] and blocks["test"]
    assert sum(len(b) for b in blocks.values()) == 8
    with pytest.raises(ValueError, match="group pattern"):
        split_datalist([{"image": "/x/nomatch.png", "label": 0}], group_pattern=r"_z(\d+)_")


def test_datalist_json_is_written_then_reused_and_checked(tmp_path):
    folder = _folder(tmp_path / "d")
    dl = str(tmp_path / "split.json")
    first = make_class_folder_datalist(str(folder), ["a", "b", "c"], dl, seed=3)
    saved = json.load(open(dl))
    assert not os.path.isabs(saved["training"][0]["image"])  # portable: relative to the dataset folder
    # a new file does not change a split once written
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a" / "a_999.png")
    assert make_class_folder_datalist(str(folder), ["a", "b", "c"], dl, seed=99) == first
    with pytest.raises(ValueError, match="classes"):
        make_class_folder_datalist(str(folder), ["a", "b"], dl)
    os.remove(first["test"][0]["image"])
    with pytest.raises(FileNotFoundError, match="missing"):
        make_class_folder_datalist(str(folder), ["a", "b", "c"], dl)


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="get it here"):
        make_class_folder_datalist(str(tmp_path / "nope"), ["a"], missing_message="get it here")
    _folder(tmp_path, {"a": 2})
    with pytest.raises(FileNotFoundError, match=r"class folder .*b.* is missing"):
        list_class_folder(str(tmp_path), ["a", "b"])
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        list_class_folder(str(tmp_path), ["e"])
    assert len(list_images(str(tmp_path))) == 2
    with pytest.raises(FileNotFoundError, match="no image"):
        list_images(str(tmp_path / "e"))
