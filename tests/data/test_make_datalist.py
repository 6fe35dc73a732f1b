"""make_datalist: class folders and CSV/JSON tables of real images -> a checked, seeded, group-aware datalist."""

import csv
import glob
import json
import os
import re
import shutil

import pytest
from pydicom.data import get_testdata_file

from monai_rd.errors import DataCheckError, OutputFolderError
from monai_rd.make_datalist import datalist_class_names, load_or_make_datalist, main, make_datalist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "bundles", "rd_demo", "data")
SPLITS = ("training", "validation", "test")


def _pngs(lobe, n, start=0):
    return sorted(glob.glob(os.path.join(DEMO, lobe, "*.png")))[start : start + n]


def _class_folders(root, per_class=8, lobes=("frontal", "occipital", "temporal")):
    """root/<lobe>/<real demo PNG>, distinct images per class."""
    for lobe in lobes:
        os.makedirs(root / lobe)
        for src in _pngs(lobe, per_class):
            shutil.copy(src, root / lobe / os.path.basename(src))
    return root


def _images(datalist, split):
    return {os.path.basename(it["image"]) for it in datalist[split]}


def test_class_folders_give_a_stratified_seeded_split_with_every_class(tmp_path):
    root = _class_folders(tmp_path / "data")
    (root / "frontal" / "README.txt").write_text("not an image")
    (root / "frontal" / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "run" / "datalist.json"
    made = make_datalist(str(root), str(out), seed=3)
    assert made["classes"] == ["frontal", "occipital", "temporal"]
    # 8 per class: round(8 * 0.15) = 1 for validation and test, 6 for training, in every class
    assert made["class_counts"] == {s: {c: n for c in made["classes"]} for s, n in zip(SPLITS, (6, 1, 1))}
    saved = json.load(open(out))
    assert saved["dataset_dir"] == str(root) and saved["seed"] == 3
    assert all(not os.path.isabs(it["image"]) for s in SPLITS for it in saved[s])
    assert "README.txt" not in str(saved) and ".DS_Store" not in str(saved)
    # the bundle reads the same items back, with absolute paths
    back = load_or_make_datalist(str(out), None, made["classes"])
    assert back == {s: made[s] for s in SPLITS}
    # seeded: the same seed gives the same split, another seed another one
    assert make_datalist(str(root), seed=3)["validation"] == made["validation"]
    assert make_datalist(str(root), seed=4)["validation"] != made["validation"]


def test_a_patient_folder_stays_in_one_split_even_across_classes(tmp_path):
    root = tmp_path / "data"
    for p in range(12):  # 12 patients, each with images of both classes in a folder named after them
        for _k, lobe in enumerate(("frontal", "temporal")):
            os.makedirs(root / lobe / f"P{p:02d}")
            for src in _pngs(lobe, 2, start=2 * p):
                shutil.copy(src, root / lobe / f"P{p:02d}" / os.path.basename(src))
    made = make_datalist(str(root), seed=0, val_fraction=0.25, test_fraction=0.25)
    where = {}
    for s in SPLITS:
        for it in made[s]:
            where.setdefault(it["group"], set()).add(s)
    assert len(where) == 12 and all(len(splits) == 1 for splits in where.values())
    assert sum(len(made[s]) for s in SPLITS) == 48


def test_a_csv_with_groups_and_given_splits(tmp_path):
    rows = [("frontal", "a", "training"), ("frontal", "b", "validation"), ("frontal", "c", "test"),
            ("temporal", "d", "training"), ("temporal", "e", "validation"), ("temporal", "f", "test")]
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "patient", "split"])
        for i, (lobe, patient, split) in enumerate(rows):
            src = _pngs(lobe, 1, start=i)[0]
            shutil.copy(src, tmp_path / f"img{i}.png")
            w.writerow([f"img{i}.png", lobe, patient, split])
    made = make_datalist(str(table), classes=["temporal", "frontal"])
    assert made["classes"] == ["temporal", "frontal"]
    assert _images(made, "validation") == {"img1.png", "img4.png"}
    assert {it["label"] for it in made["training"]} == {0, 1}
    assert made["training"][0]["group"] in {"a", "d"} and made["dataset_dir"] == str(tmp_path)
    with open(table, "a", newline="") as f:
        csv.writer(f).writerow(["img0.png", "parietal", "g", "test"])
    with pytest.raises(DataCheckError, match=r"labels\.csv, line 8: label 'parietal' is not one of --classes"):
        make_datalist(str(table), classes=["temporal", "frontal"])


def test_a_json_table_with_integer_labels_needs_the_class_names(tmp_path):
    items = [{"image": p, "label": k} for k, lobe in enumerate(("frontal", "temporal")) for p in _pngs(lobe, 8)]
    (tmp_path / "table.json").write_text(json.dumps(items))
    with pytest.raises(DataCheckError, match="integer label 0 needs --classes"):
        make_datalist(str(tmp_path / "table.json"))
    made = make_datalist(str(tmp_path / "table.json"), classes=["frontal", "temporal"])
    assert made["class_counts"]["test"] == {"frontal": 1, "temporal": 1}


def test_some_rows_with_a_split_and_some_without_are_refused(tmp_path):
    items = [
        {"image": p, "label": "frontal", **({"split": "test"} if i == 0 else {})}
        for i, p in enumerate(_pngs("frontal", 3))
    ]
    (tmp_path / "table.json").write_text(json.dumps(items))
    with pytest.raises(DataCheckError, match="1 of 3 items have a split and the others do not"):
        make_datalist(str(tmp_path / "table.json"))


def test_an_empty_class_and_a_class_missing_from_a_split_are_refused(tmp_path):
    root = _class_folders(tmp_path / "data", per_class=8, lobes=("frontal", "temporal"))
    os.makedirs(root / "occipital")
    with pytest.raises(DataCheckError, match=r"occipital'\] hold no image"):
        make_datalist(str(root))
    shutil.rmtree(root / "occipital")
    for extra in os.listdir(root / "temporal")[3:]:
        os.remove(root / "temporal" / extra)  # 3 images: round(3 * 0.15) = 0 for validation and test
    with pytest.raises(
        DataCheckError, match=r"class 'temporal' has no image in validation; class 'temporal' has no image in test"
    ) as e:
        make_datalist(str(root), str(tmp_path / "datalist.json"))
    assert "raise --val/--test" in str(e.value)
    assert re.search(r"\ntemporal +3 +0 +0\n", str(e.value))  # the counts table shows where the class is missing
    assert not os.path.exists(tmp_path / "datalist.json")


def test_unreadable_files_are_listed_by_path_and_nothing_is_written(tmp_path):
    root = _class_folders(tmp_path / "data", lobes=("frontal", "temporal"))
    (root / "frontal" / "broken.dcm").write_bytes(b"not a dicom file" * 20)
    src = _pngs("temporal", 1, start=9)[0]
    (root / "temporal" / "truncated.png").write_bytes(open(src, "rb").read()[:100])
    with pytest.raises(DataCheckError) as e:
        make_datalist(str(root), str(tmp_path / "datalist.json"))
    text = str(e.value)
    assert "2 problem(s)" in text and "frontal/broken.dcm" in text and "temporal/truncated.png" in text
    assert not os.path.exists(tmp_path / "datalist.json")


def test_real_dicom_and_nifti_files_are_scanned_and_the_output_is_not_overwritten(tmp_path):
    from nibabel.testing import data_path

    root = tmp_path / "data"
    os.makedirs(root / "ct")
    os.makedirs(root / "mr")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "IM0001")  # extension-less DICOM
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "DICOMDIR")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr" / "mr.dcm")
    shutil.copy(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), root / "mr" / "overlay.dcm")  # pydicom-data
    shutil.copy(os.path.join(str(data_path), "anatomical.nii"), root / "mr" / "anat.nii")
    for k in range(3):
        shutil.copy(_pngs("frontal", 1, start=k)[0], root / "ct" / f"p{k}.png")
    out = tmp_path / "datalist.json"
    made = make_datalist(str(root), str(out), val_fraction=0.34, test_fraction=0.34)
    listed = {os.path.basename(it["image"]) for s in SPLITS for it in made[s]}
    assert listed == {"IM0001", "mr.dcm", "overlay.dcm", "anat.nii", "p0.png", "p1.png", "p2.png"}
    with pytest.raises(OutputFolderError, match="--overwrite"):
        make_datalist(str(root), str(out), val_fraction=0.34, test_fraction=0.34)


def test_the_command_line_prints_the_counts_and_reports_errors(tmp_path, capsys):
    root = _class_folders(tmp_path / "data", lobes=("frontal", "temporal"))
    out = tmp_path / "models" / "datalist.json"
    assert main([str(root), "--out", str(out), "--seed", "1", "--num_workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "frontal" in printed and "validation" in printed and f"written: {out}" in printed
    assert json.load(open(out))["seed"] == 1
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")]) == 1
    assert "nowhere does not exist" in capsys.readouterr().err


def test_class_names_come_from_the_datalist_or_the_folders(tmp_path):
    root = _class_folders(tmp_path / "data", lobes=("temporal", "frontal"))
    assert datalist_class_names(str(tmp_path / "none.json"), str(root)) == ["frontal", "temporal"]
    with pytest.raises(DataCheckError, match="pass --dataset_dir"):
        datalist_class_names(str(tmp_path / "none.json"), None)
    out = tmp_path / "datalist.json"
    make_datalist(str(root), str(out), classes=["temporal", "frontal"])
    assert datalist_class_names(str(out), str(root)) == ["temporal", "frontal"]


def test_the_bundle_builds_the_datalist_once_and_refuses_other_classes(tmp_path):
    root = _class_folders(tmp_path / "data", lobes=("frontal", "temporal"))
    out = tmp_path / "models" / "datalist.json"
    first = load_or_make_datalist(str(out), str(root), ["frontal", "temporal"], seed=5)
    assert not os.path.exists(out)  # written once the bundle's check_datalist passes it
    first.save()
    assert os.path.isfile(out) and json.load(open(out))["seed"] == 5
    # written once: a later run with another seed reads the same split
    assert load_or_make_datalist(str(out), str(root), ["frontal", "temporal"], seed=6) == first
    with pytest.raises(DataCheckError, match=r"written for the classes \['frontal', 'temporal'\]"):
        load_or_make_datalist(str(out), str(root), ["temporal", "frontal"])
