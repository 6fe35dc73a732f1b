"""The MONAI Label tasks in process, without a server: strict loading of model.pt only, class labels read from the
datastore, and the RD options the train task sets (data, teacher cache, batch size, run folder)."""

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')
from monailabel.datastore.local import LocalDatastore  # noqa: E402

from monai_rd.bundle import model_spec, write_model_spec  # noqa: E402
from monai_rd.data import training_items  # noqa: E402
from monai_rd.errors import CheckpointMismatchError, DataCheckError, OptionError  # noqa: E402
from monai_rd.label import (  # noqa: E402
    IMAGE_PATTERNS,
    RDLabelApp,
    RDTrainTask,
    ServedStudent,
    check_model_file,
    class_index,
    labelled_datalist,
    publish_model,
)
from monai_rd.networks import StudentClassifier  # noqa: E402

pytestmark = pytest.mark.label

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
CLASSES = ["cerebellum", "frontal", "occipital", "parietal", "temporal"]


def _write_model(folder, num_classes=5, drop_key=None):
    """A model.pt + model_meta.json as rd_demo's training writes them (ResNet18 student, 32 px, gray)."""
    os.makedirs(folder, exist_ok=True)
    reading = dict(frame=None, window="file", slice_axis=-1, slice_index=None, projection=None)  # train.json's defaults
    write_model_spec(model_spec(CLASSES, 32, 1, False, "resnet18", BUNDLE, reading=reading), str(folder))
    state = StudentClassifier("resnet18", num_classes=num_classes, in_channels=1).state_dict()
    if drop_key:
        state.pop(drop_key)
    torch.save(state, os.path.join(folder, "model.pt"))


def test_only_model_pt_is_served():
    assert check_model_file("/x/models/model.pt") == "/x/models/model.pt"
    for name in ("checkpoint_epoch=3.pt", "checkpoint_final.pt", "model.ts", "model.onnx"):
        with pytest.raises(CheckpointMismatchError, match="not a deployed student"):
            check_model_file(f"/x/models/{name}")


def test_the_app_refuses_a_checkpoint_and_needs_a_bundle(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="checkpoint_final.pt is not a deployed student"):
        RDLabelApp(
            str(tmp_path), str(tmp_path), {"bundle": BUNDLE, "model_file": str(tmp_path / "checkpoint_final.pt")}
        )
    with pytest.raises(OptionError, match="--conf bundle"):
        RDLabelApp(str(tmp_path), str(tmp_path), {})


def test_model_pt_loads_strictly_and_reloads_when_replaced(tmp_path):
    _write_model(tmp_path / "models")
    served = ServedStudent(BUNDLE, str(tmp_path / "models"))
    first = served.load("cpu")
    assert first["spec"]["class_names"] == CLASSES and not first["network"].training
    assert served.load("cpu") is first  # unchanged files: the same network
    _write_model(tmp_path / "other")
    publish_model(str(tmp_path / "other"), str(tmp_path / "models"))
    second = served.load("cpu")
    assert second is not first  # a published model is picked up without a restart
    assert len([d for d in os.listdir(tmp_path / "models") if d.startswith("replaced-")]) == 1

    _write_model(tmp_path / "missing", drop_key="head.weight")
    missing = r'(?s)does not fit the network.*Missing key\(s\) in state_dict: "head.weight"'
    with pytest.raises(CheckpointMismatchError, match=missing):
        ServedStudent(BUNDLE, str(tmp_path / "missing")).load("cpu")
    _write_model(tmp_path / "three", num_classes=3)  # same keys, a 3-class head: the spec says 5
    with pytest.raises(CheckpointMismatchError, match=r"(?s)does not fit the network.*size mismatch for head.weight"):
        ServedStudent(BUNDLE, str(tmp_path / "three")).load("cpu")
    with pytest.raises(FileNotFoundError, match="no trained model to serve yet"):
        ServedStudent(BUNDLE, str(tmp_path / "empty")).load("cpu")


def test_class_index_by_name_or_index():
    assert class_index("frontal", CLASSES, "x") == 1 and class_index(4, CLASSES, "x") == 4
    assert class_index("2", CLASSES, "x") == 2
    for bad in ("liver", 5, -1, True, None, 1.5):
        with pytest.raises(DataCheckError, match="image 'a': its label"):
            class_index(bad, CLASSES, "image 'a'")


@pytest.fixture
def datastore(tmp_path):
    """7 demo PNGs in a MONAI Label local datastore; 6 labelled (by info or by a JSON file), 1 not."""
    studies = tmp_path / "studies"
    studies.mkdir()
    names = []
    for c in CLASSES:
        folder = os.path.join(BUNDLE, "data", c)
        for f in sorted(os.listdir(folder))[:2 if c in ("frontal", "temporal") else 1]:
            shutil.copy(os.path.join(folder, f), studies / f"{c}_{f}")
            names.append(f"{c}_{f}")
    ds = LocalDatastore(str(studies), extensions=list(IMAGE_PATTERNS))
    labelled = {}
    for i, name in enumerate(sorted(names)[:6]):
        image_id, c = name[:-4], name.split("_")[0]
        label_file = tmp_path / f"{image_id}.json"
        label_file.write_text(json.dumps({"label": c}))
        ds.save_label(image_id, str(label_file), "final", {"label": c} if i % 2 else {})
        labelled[ds.get_image_uri(image_id)] = CLASSES.index(c)
    return ds, labelled


def test_the_labelled_images_and_only_those_are_the_datalist(datastore):
    ds, labelled = datastore
    items = labelled_datalist(ds, CLASSES)
    assert {i["image"]: i["label"] for i in items} == labelled  # the unlabelled image is not in it
    with pytest.raises(DataCheckError, match="not one of the classes"):
        labelled_datalist(ds, ["a", "b"])


def test_the_train_task_sets_the_rd_recipe_options(datastore, tmp_path):
    ds, labelled = datastore
    _write_model(tmp_path / "models")
    task = RDTrainTask(BUNDLE, str(tmp_path / "models"), {})
    request = {"max_epochs": 2, "val_split": 0.2, "seed": 0}
    train, val = task._partition_datalist(task._fetch_datalist(request, ds), request)
    assert (
        sorted(i["image"] for i in train + val) == sorted(labelled)
        and val
        and not set(map(str, train)) & set(map(str, val))
    )
    task._request, task._run_dir = request, str(tmp_path / "models" / "label_runs" / "t")
    overrides = task._update_overrides({"train#trainer#max_epochs": 2, "train#dataset#data": train,
                                        "validate#dataset#data": val, "device": "cpu"})
    assert not {"train#trainer#max_epochs", "train#dataset#data", "validate#dataset#data"} & set(overrides)
    assert overrides["datalist"] == {"training": train, "validation": val}
    assert overrides["datalist_splits"] == ["training", "validation"]
    assert overrides["batch_size"] == len(train) < 32  # the bundle's 32 fitted to the labelled images
    assert overrides["epochs"] == 2 and overrides["class_names"] == CLASSES and overrides["image_size"] == 32
    assert overrides["ckpt_dir"] == os.path.join(task._run_dir, "models")
    # the method builds the teacher cache from the options' training items (Method.prepare): the datalist's training
    # split, plus unlabelled images only when the datalist lists them (MONAI Label's does not), so exactly the
    # labelled images above
    initialize = json.load(open(os.path.join(BUNDLE, "configs", "train.json")))["initialize"]
    assert "$@method_def.prepare(@datalist, @base_transforms, @train#augmentation)" in initialize
    assert training_items(overrides["datalist"], use=True, num_classes=len(CLASSES)) == train
    with pytest.raises(DataCheckError, match="needs at least 3"):
        task._partition_datalist(train[:2], request)
    with pytest.raises(CheckpointMismatchError):
        task({"model_filename": "checkpoint_epoch=1.pt"}, ds)


def test_a_multi_label_bundle_answers_sigmoid_scores_and_every_class_above_one_half(tmp_path):
    from monai_rd.datasets import CHESTXRAY14_FINDINGS
    from monai_rd.label import RDClassifyInferTask

    bundle = os.path.join(REPO, "bundles", "rd_chestxray")
    reading = dict(frame=None, window="file", slice_axis=-1, slice_index=None, projection=None)
    write_model_spec(
        model_spec(list(CHESTXRAY14_FINDINGS), 32, 1, True, "resnet18", bundle, reading=reading), str(tmp_path)
    )
    torch.manual_seed(0)
    net = StudentClassifier("resnet18", num_classes=len(CHESTXRAY14_FINDINGS), in_channels=1).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    image = os.path.join(BUNDLE, "data", "frontal", sorted(os.listdir(os.path.join(BUNDLE, "data", "frontal")))[0])
    task = RDClassifyInferTask(bundle, str(tmp_path))
    assert task.labels == list(CHESTXRAY14_FINDINGS)
    _, result = task({"image": image, "device": "cpu"})
    assert result["activation"] == "sigmoid"
    loaded = task.student.load("cpu")
    x = loaded["preprocessing"]({"image": image})["image"]
    with torch.no_grad():
        expected = torch.sigmoid(net(x[None]))[0]
    got = torch.tensor([result["scores"][c] for c in CHESTXRAY14_FINDINGS])
    assert torch.allclose(got, expected, atol=1e-5) and abs(float(got.sum()) - 1) > 1e-3
    assert result["label"] == [c for c, s in zip(CHESTXRAY14_FINDINGS, got.tolist()) if s >= 0.5]


def test_the_served_bundles_declare_the_monailabel_version_they_are_tested_with():
    """metadata.json's supported_apps, setup.py's label pin and the installed monailabel are the same version."""
    import re

    import monailabel

    pinned = re.search(r'"monailabel==([^"]+)"', open(os.path.join(REPO, "setup.py")).read()).group(1)
    assert monailabel.__version__ == pinned
    declared, expected = {}, {}
    for name in sorted(os.listdir(os.path.join(REPO, "bundles"))):
        configs = os.path.join(REPO, "bundles", name, "configs")
        meta = json.load(open(os.path.join(configs, "metadata.json")))
        overrides = os.path.join(configs, "overrides.json")
        recipe = json.load(open(overrides)).get("recipe", "classification") if os.path.isfile(overrides) else None
        spatial = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
        declared[name] = meta["supported_apps"].get("monailabel")
        # what the app serves and its tests cover: 2D classification and segmentation (3D classification is not)
        served = recipe == "segmentation" or (recipe == "classification" and len(spatial) == 2)
        expected[name] = pinned if served else None
    assert declared == expected and sum(v is not None for v in declared.values()) >= 10


def test_the_own_data_bundle_is_served_with_its_own_classes_and_dicom_reading(tmp_path):
    """rd_classify (the own-data bundle) served: the user's classes from model_meta.json (a model.pt and model spec as
    its training writes them, untrained weights), DICOM read as displayed, scores equal to its inference.json's.

    Catches the served scores drifting from the bundle's own inference.json (another window, slope/intercept or
    MONOCHROME1 handling, size or class order) on the real DICOM files a clinic would serve.
    """
    import csv
    import subprocess
    import sys

    from pydicom.data import get_testdata_file

    from monai_rd.label import RDClassifyInferTask

    bundle = os.path.join(REPO, "bundles", "rd_classify")
    classes = ["ct", "mr", "us"]
    models, images = tmp_path / "models", tmp_path / "new_images"
    reading = dict(frame=None, window="file", slice_axis=-1, slice_index=None, projection=None)
    write_model_spec(model_spec(classes, 32, 1, False, "resnet18", bundle, reading=reading), str(models))
    torch.manual_seed(0)
    torch.save(StudentClassifier("resnet18", num_classes=3, in_channels=1).state_dict(), models / "model.pt")
    images.mkdir()
    # CT and MR with rescale slope/intercept and a window in the file, and a MONOCHROME1 radiograph
    for name in ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm"):
        shutil.copy(get_testdata_file(name), images / name)

    # the rd_classify docs' inference command (placeholders filled)
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    os.path.join(bundle, "configs", "inference.json"), "--ckpt_dir", str(models),
                    "--input_dir", str(images), "--output_dir", str(tmp_path / "predictions")],
                   check=True, capture_output=True, timeout=600, cwd=REPO)
    rows = {os.path.basename(r["image"]): r for r in csv.DictReader(open(tmp_path / "predictions" / "predictions.csv"))}
    assert sorted(rows) == sorted(os.listdir(images))

    task = RDClassifyInferTask(bundle, str(models))
    assert task.labels == classes
    for name, row in rows.items():
        _, result = task({"image": str(images / name), "device": "cpu"})
        assert result["activation"] == "softmax" and result["label"] == row["predicted"]
        for c in classes:
            assert abs(result["scores"][c] - float(row[c])) <= 1e-5, (name, c, result["scores"], row)
