"""check_datalist and check_writable: every problem found in one pass, reported at once with its path."""

import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from monai_rd.data import check_datalist, check_writable, default_image_loader
from monai_rd.errors import DataCheckError, OutputFolderError, find_rd_error

CLASSES = ["a", "b", "c"]


def _png(path, value=0, shape=(6, 5), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(shape, value, np.uint8)
    Image.fromarray(np.stack([arr] * 3, -1) if mode == "RGB" else arr, mode).save(path)
    return str(path)


def _clean(tmp_path):
    """9 distinct images: training has every class, validation lacks class 2."""
    d = tmp_path / "img"
    return {
        "training": [{"image": _png(d / f"t{i}.png", 10 * i), "label": i % 3} for i in range(6)],
        "validation": [{"image": _png(d / f"v{i}.png", 100 + i, mode="RGB"), "label": i % 2} for i in range(2)],
        "test": [{"image": _png(d / "s0.png", 200), "label": 2}],
    }


def test_clean_datalist_passes_with_counts(tmp_path):
    dl = _clean(tmp_path)
    dl["training"].append(dict(dl["training"][0]))  # the same file twice in one split: counted, not an error
    summary = check_datalist(dl, CLASSES)
    assert summary["num_items"] == {"training": 7, "validation": 2, "test": 1}
    assert summary["class_counts"]["training"] == {"a": 3, "b": 2, "c": 2}
    assert summary["class_counts"]["validation"] == {"a": 1, "b": 1, "c": 0}
    assert summary["absent_classes"] == {"training": [], "validation": ["c"], "test": ["a", "b"]}
    assert summary["num_files"] == 9
    assert summary["within_split_duplicates"] == {"training": 1, "validation": 0, "test": 0}
    assert json.loads(json.dumps(summary)) == summary  # loggable as is
    assert check_datalist(dl, CLASSES, num_workers=2) == summary


def test_multi_label_counts_positives_and_checks_vectors(tmp_path):
    d = tmp_path / "img"
    dl = {
        "training": [
            {"image": _png(d / "t0.png", 1), "label": [1, 0, 1]},
            {"image": _png(d / "t1.png", 2), "label": [0.0, 1.0, 1.0]},
        ],
        "validation": [{"image": _png(d / "v0.png", 3), "label": [0, 1, 0]}],
    }
    summary = check_datalist(dl, CLASSES, multi_label=True, splits=("training", "validation"))
    assert summary["class_counts"]["training"] == {"a": 1, "b": 1, "c": 2}
    assert summary["absent_classes"]["validation"] == ["a", "c"]
    dl["training"][0]["label"] = [1, 0]
    dl["training"][1]["label"] = [0, 2, 1]
    dl["validation"][0]["label"] = 1  # a class index where a multi-hot vector is due
    with pytest.raises(DataCheckError) as e:
        check_datalist(dl, CLASSES, multi_label=True, splits=("training", "validation"))
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert f"training[0] {dl['training'][0]['image']}: label has 2 values, expected 3" in msg
    assert f"training[1] {dl['training'][1]['image']}: label [0, 2, 1] has values other than 0 and 1" in msg
    assert f"validation[0] {dl['validation'][0]['image']}: label 1 is not a list of 3 values" in msg


def test_every_bad_file_and_label_is_in_one_message(tmp_path):
    dl = _clean(tmp_path)
    d = tmp_path / "bad"
    d.mkdir()
    good = open(dl["training"][0]["image"], "rb").read()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    vol = np.zeros((6, 5, 1, 4), np.float32)  # 4 channels after loading
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "four.nii.gz")
    vol = np.zeros((6, 5), np.float32)
    vol[2, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "nan.nii.gz")
    bad_files = {
        "truncated.png": "cannot be decoded",
        "zero.png": "is empty (0 bytes",
        "text.png": "cannot be decoded",
        "missing.png": "the file does not exist",
        "four.nii.gz": "has 4 channels",
        "nan.nii.gz": "has 1 NaN or infinite values",
    }
    dl["training"] += [{"image": str(d / name), "label": 0} for name in bad_files]
    dl["validation"].append({"image": _png(d / "unknown_class.png", 77), "label": 3})  # found before any epoch
    dl["validation"].append({"image": _png(d / "no_label.png", 78)})
    dl["test"].append({"image": _png(d / "str_label.png", 79), "label": "1"})
    with pytest.raises(DataCheckError) as e:
        check_datalist(dl, CLASSES)
    msg = str(e.value)
    assert msg.startswith("9 problem(s) in the datalist; fix them and run again:")
    for i, (name, what) in enumerate(bad_files.items(), start=6):
        assert f"training[{i}] {d / name}: {what}" in msg
    assert "UnidentifiedImageError" in msg  # the decoder's own reason, not MONAI's reader list
    assert f"validation[2] {d / 'unknown_class.png'}: label 3 is out of range [0, 3)" in msg
    assert f"validation[3] {d / 'no_label.png'}: the item has no 'label'" in msg
    assert f"test[1] {d / 'str_label.png'}: label '1' (str) is not an integer class index" in msg
    assert "does not exist" not in msg.split("missing.png")[0]  # no problem reported for a good file
    # the same data through a bundle config: the error survives MONAI's wrapping and is found by the excepthook
    parser = ConfigParser({"imports": ["$import monai_rd"], "datalist": dl, "class_names": CLASSES,
                           "check": "$monai_rd.data.check_datalist(@datalist, @class_names, multi_label=False)"})
    with pytest.raises(Exception) as e:
        parser.get_parsed_content("check")
    assert isinstance(find_rd_error(e.value), DataCheckError) and str(d / "zero.png") in str(find_rd_error(e.value))


def test_spatial_dims_and_cap_on_reported_problems(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    dl = {"training": [{"image": str(tmp_path / "vol.nii.gz"), "label": 0}]}
    assert check_datalist(dl, CLASSES[:1], splits=("training",))["num_files"] == 1
    with pytest.raises(DataCheckError, match=r"3 spatial dimensions where the pipeline takes 2"):
        check_datalist(dl, CLASSES[:1], splits=("training",), spatial_dims=2)
    dl = {"training": [{"image": str(tmp_path / f"gone{i}.png"), "label": 0} for i in range(60)]}
    with pytest.raises(DataCheckError) as e:
        check_datalist(dl, CLASSES[:1], splits=("training",), max_reported=5)
    msg = str(e.value)
    assert msg.startswith("60 problem(s) in the datalist (first 5 shown)") and msg.endswith("... and 55 more")
    assert msg.count("does not exist") == 5


def test_malformed_datalist_names_the_key(tmp_path):
    with pytest.raises(DataCheckError, match="must be a dict of splits .* got a list"):
        check_datalist([{"image": "x.png"}], CLASSES)
    bad = {"training": {"image": "x.png"}, "validation": ["x.png", {"img": "y.png", "label": 0}, {"image": 5}]}
    with pytest.raises(DataCheckError) as e:
        check_datalist(bad, CLASSES)
    msg = str(e.value)
    assert "5 problem(s)" in msg
    assert "the datalist['training'] is a dict, not a list of items" in msg
    assert "validation[0]: the item is a str, not a dict" in msg
    assert "validation[1]: the item has no 'image' key (its keys: ['img', 'label'])" in msg
    assert "validation[2]: 'image' is 5, not the path of one image file" in msg
    assert "has no split 'test'" in msg
    # a datalist JSON file: invalid JSON is located; relative paths resolve against the file's folder
    path = tmp_path / "datalist.json"
    path.write_text('{"training": [{"image": "a.png", "label": 0},]}')
    with pytest.raises(DataCheckError, match=rf"{path} is not valid JSON \(.* at line 1, column \d+\)"):
        check_datalist(str(path), CLASSES)
    _png(tmp_path / "a.png")
    path.write_text('{"training": [{"image": "a.png", "label": 0}]}')
    assert check_datalist(str(path), CLASSES[:1], splits=("training",))["num_files"] == 1


def test_duplicates_across_splits_by_path_and_by_pixels(tmp_path):
    dl = _clean(tmp_path)
    same_file = dl["training"][1]["image"]
    dl["test"].append({"image": os.path.join(os.path.dirname(same_file), ".", os.path.basename(same_file)), "label": 1})
    copy = tmp_path / "elsewhere" / "copy_of_v0.png"
    copy.parent.mkdir()
    shutil.copy(dl["validation"][0]["image"], copy)
    dl["training"].append({"image": str(copy), "label": 0})
    recoded = tmp_path / "elsewhere" / "v1.bmp"  # the same pixels in another format: other bytes
    Image.open(dl["validation"][1]["image"]).save(recoded)
    dl["test"].append({"image": str(recoded), "label": 1})
    with pytest.raises(DataCheckError) as e:
        check_datalist(dl, CLASSES)
    msg = str(e.value)
    assert msg.startswith("3 problem(s)")
    leak = "(a leak between splits):"
    v0, v1 = dl["validation"][0]["image"], dl["validation"][1]["image"]
    assert f"the same file in training and test {leak} training[1] {same_file}, test[1] {same_file};" in msg
    assert f"the same pixels in training and validation {leak} training[6] {copy}, validation[0] {v0};" in msg
    assert f"the same pixels in validation and test {leak} validation[1] {v1}, test[2] {recoded};" in msg
    assert check_datalist(dl, CLASSES, check_duplicates=False)["num_files"] == 11


def test_each_file_is_decoded_once(tmp_path):
    dl = _clean(tmp_path)
    dl["validation"].append(dict(dl["validation"][0]))
    calls = []
    base = default_image_loader()

    def loader(path):
        calls.append(path)
        return base(path)

    check_datalist(dl, CLASSES, loader=loader, check_duplicates=False)
    assert len(calls) == len(set(calls)) == 9


def test_check_writable(tmp_path):
    new = tmp_path / "out" / "models"
    assert check_writable(str(tmp_path), new) == [str(tmp_path), str(new)]
    assert not new.exists() and os.listdir(tmp_path) == []  # checking creates nothing
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError) as e:
        check_writable(tmp_path, blocker / "eval", blocker)
    msg = str(e.value)
    assert f"{blocker / 'eval'} cannot be created: {blocker} is a file, not a folder" in msg
    assert f"{blocker} is a file, not a folder" in msg.replace(f"{blocker / 'eval'} cannot", "")
    assert str(tmp_path) + ":" not in msg  # the writable one is not listed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /sys, which refuses new files on Linux")
def test_check_writable_existing_folder_that_refuses_files():
    # sysfs refuses file creation even to root, where chmod-based read-only folders do not block writes
    with pytest.raises(OutputFolderError, match=r"/sys/monai_rd_eval: cannot write there \(it does not exist"):
        check_writable("/sys/monai_rd_eval")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a chmod 0o555 folder")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match=rf"{ro}: cannot write there: Permission denied"):
            check_writable(ro)
    finally:
        ro.chmod(0o755)


def test_a_class_without_training_images_is_refused(tmp_path, caplog):
    """Catches a class with no training image trained anyway (the only word was a warning that its recall and AUC
    are undefined); a class missing from validation alone stays a warning."""
    d = tmp_path / "img"
    dl = {
        "training": [{"image": _png(d / "t0.png", 1), "label": 0}, {"image": _png(d / "t1.png", 2), "label": 1}],
        "validation": [{"image": _png(d / "v0.png", 3), "label": 2}],
    }
    with pytest.raises(DataCheckError, match=r"training has no item of class\(es\) \['c'\]: the model cannot learn"):
        check_datalist(dl, CLASSES, splits=("training", "validation"))
    dl["training"].append({"image": _png(d / "t2.png", 4), "label": 2})
    assert check_datalist(dl, CLASSES, splits=("training", "validation"))["absent_classes"]["validation"] == ["a", "b"]
    assert "validation has no item of class(es) ['a', 'b']" in caplog.text


def test_a_new_split_is_written_only_once_its_files_pass_the_check(tmp_path):
    """Catches a failed data check leaving <ckpt_dir>/datalist.json behind with the bad file in it: the rerun after
    removing the file then failed with "delete the datalist"."""
    from monai_rd.data import make_class_folder_datalist

    for cls in CLASSES:
        for i in range(5):
            _png(tmp_path / "data" / cls / f"{cls}{i}.png", 10 * i + ord(cls))
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    split = tmp_path / "split.json"
    made = make_class_folder_datalist(str(tmp_path / "data"), CLASSES, str(split), val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(DataCheckError, match="broken.png: cannot be decoded"):
        check_datalist(made, CLASSES)
    assert not split.exists()
    os.remove(tmp_path / "data" / "a" / "broken.png")
    made = make_class_folder_datalist(str(tmp_path / "data"), CLASSES, str(split), val_fraction=0.2, test_fraction=0.2)
    check_datalist(made, CLASSES)
    saved = json.load(open(split))
    assert saved["classes"] == CLASSES and sum(len(saved[s]) for s in ("training", "validation", "test")) == 15
