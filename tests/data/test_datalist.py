import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from monai_rd.data import (
    list_class_folder,
    list_images,
    load_json,
    make_class_folder_datalist,
    read_groups_csv,
    split_datalist,
)
from monai_rd.errors import DataCheckError, OptionError


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
    assert not os.path.exists(dl)  # written once checked (check_datalist), or saved explicitly
    first.save()
    saved = json.load(open(dl))
    assert not os.path.isabs(saved["training"][0]["image"])  # portable: relative to the dataset folder
    # a new file does not change a split once written
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a" / "a_999.png")
    assert make_class_folder_datalist(str(folder), ["a", "b", "c"], dl, seed=99) == first
    with pytest.raises(ValueError, match="classes"):
        make_class_folder_datalist(str(folder), ["a", "b"], dl)
    os.remove(first["test"][0]["image"])
    with pytest.raises(FileNotFoundError, match="not under .* pass --datalist_json <a new file"):
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


def test_split_by_groups_keeps_each_group_in_one_split(tmp_path):
    items = [{"image": f"/d/{c}/{c}_{i:03d}.png", "label": k} for k, c in enumerate("ab") for i in range(30)]
    patient = {os.path.basename(it["image"]): f"p{(i * 7) % 12}" for i, it in enumerate(items)}  # 12 mixed groups
    for groups in (patient, lambda path: patient[os.path.basename(path)]):
        out = split_datalist(items, 0.25, 0.25, seed=1, groups=groups)
        where = {}
        for s, split in out.items():
            for it in split:
                where.setdefault(patient[os.path.basename(it["image"])], set()).add(s)
        assert all(len(v) == 1 for v in where.values()) and len(where) == 12
        assert all(out[s] for s in out)
        assert sorted(i["image"] for s in out.values() for i in s) == sorted(i["image"] for i in items)
    # without groups the same items straddle: the check above is not vacuous
    plain = split_datalist(items, 0.25, 0.25, seed=1)
    spread = {}
    for s, split in plain.items():
        for it in split:
            spread.setdefault(patient[os.path.basename(it["image"])], set()).add(s)
    assert any(len(v) > 1 for v in spread.values())
    with pytest.raises(DataCheckError, match=r"1 of 60 images have no group, first: \['/d/a/a_000.png'\]"):
        split_datalist(items, groups={k: v for k, v in patient.items() if k != "a_000.png"})
    with pytest.raises(OptionError, match="not both"):
        split_datalist(items, group_pattern=r"_(\d+)", groups=patient)


def test_read_groups_csv(tmp_path):
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("image,group,extra\nTr-gl_0001.jpg,pat1,x\nTr-gl_0002.jpg, pat1 ,y\n")
    assert read_groups_csv(str(csv_path)) == {"Tr-gl_0001.jpg": "pat1", "Tr-gl_0002.jpg": "pat1"}
    csv_path.write_text("file,patient\na.jpg,p\n")
    with pytest.raises(DataCheckError, match=r"lacks the column\(s\) \['image', 'group'\]"):
        read_groups_csv(str(csv_path))
    csv_path.write_text("image,group\na.jpg,p1\na.jpg,p2\n")
    with pytest.raises(DataCheckError, match=r"line 3: 'a.jpg' is in groups 'p1' and 'p2'"):
        read_groups_csv(str(csv_path))


def test_malformed_saved_datalist_is_named_with_its_position(tmp_path):
    folder = _folder(tmp_path / "d", {"a": 4, "b": 4})
    dl = tmp_path / "split.json"
    text = '{"classes": ["a", "b"], "training": [}'
    dl.write_text(text)
    column = text.index("}") + 1  # 1-based, at the stray brace
    with pytest.raises(DataCheckError, match=rf"datalist {dl} is not valid JSON \(.* at line 1, column {column}\)"):
        make_class_folder_datalist(str(folder), ["a", "b"], str(dl))
    no_image = {"classes": ["a", "b"], "training": [{"img": "a/a_000.png"}], "validation": [], "test": []}
    dl.write_text(json.dumps(no_image))
    with pytest.raises(DataCheckError, match=r"split 'training' item 0 has no 'image' path; delete it to re-split"):
        make_class_folder_datalist(str(folder), ["a", "b"], str(dl))
    with pytest.raises(DataCheckError, match=r"datalist .*nowhere.json does not exist"):
        load_json(str(tmp_path / "nowhere.json"), what="datalist")


def test_list_volumes_finds_nifti_files_and_dicom_series_folders(tmp_path):
    """Catches a DICOM series (suffix-less files, as scanners export them) missed or listed slice by slice, and two
    series in one folder stacked silently into one volume."""
    import nibabel as nib
    from dicom_series import write_dicom_series  # tests/data, on sys.path under pytest

    from monai_rd.data import list_volumes

    vol, affine = np.zeros((6, 5, 4)), np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(tmp_path / "a.nii.gz"))
    write_dicom_series(vol, affine, str(tmp_path / "patient1" / "ct"))
    (tmp_path / "patient1" / "notes.txt").write_text("not an image")
    items = list_volumes(str(tmp_path))
    assert items == [{"image": str(tmp_path / "a.nii.gz")}, {"image": str(tmp_path / "patient1" / "ct")}]
    write_dicom_series(vol, affine, str(tmp_path / "mixed"), suffix=".dcm")
    write_dicom_series(vol[:, :, :2], affine, str(tmp_path / "mixed"), suffix="_b.dcm")
    with pytest.raises(DataCheckError, match=r"mixed holds DICOM files of 2 series.*a folder of its own"):
        list_volumes(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no volume"):
        list_volumes(str(tmp_path / "empty"))
