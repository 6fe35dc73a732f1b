"""One-epoch smoke tests of the dataset bundles (ISIC 2018, COVID-CT, BTC, ChestX-ray14) through monai.bundle.

Each test builds a tiny dataset in that dataset's exact download layout (folders, file names, ground-truth CSV or
split files) with synthetic but image-like pictures, trains one epoch with the offline EfficientNet-Lite0 teacher
at 32 px, then evaluates the selected checkpoint on the test split.
"""

import csv
import json
import os

import monai.bundle
import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow


def _picture(path, rng, size=40, mode="L"):
    """A smooth, structured picture (gradient, bright blob, noise) saved in ``mode`` (L, RGB or RGBA)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
    img = 0.4 * yy + 0.2 * xx + 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    gray = (img * 255).astype(np.uint8)
    if mode == "L":
        arr = gray
    else:
        tint = rng.uniform(0.6, 1.0, 3)
        arr = np.stack([(gray * t).astype(np.uint8) for t in tint], -1)
        if mode == "RGBA":
            arr = np.concatenate([arr, np.full((size, size, 1), 255, np.uint8)], -1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _overrides(bundle, dataset_dir, tmp):
    return {
        "bundle_root": os.path.join(REPO, "bundles", bundle),
        "dataset_dir": str(dataset_dir),
        "datalist_json": str(tmp / "models" / "datalist.json"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "teacher_name": "efficientnet-lite0",  # the only teacher with real offline weights
        "epochs": 1,
        "batch_size": 4,
        "image_size": 32,
        "num_workers": 0,
    }


def _train_and_evaluate(bundle, overrides, tmp):
    configs = os.path.join(REPO, "bundles", bundle, "configs")
    monai.bundle.run(config_file=os.path.join(configs, "train.json"), **overrides)
    assert os.path.isfile(tmp / "models" / "model.pt")
    assert os.path.isfile(tmp / "models" / "checkpoint_epoch=1.pt")
    val = json.load(open(tmp / "eval" / "val_metrics.json"))
    assert [h["epoch"] for h in val["history"]] == [1]
    monai.bundle.run(
        config_file=[os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")], **overrides
    )
    test = json.load(open(tmp / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and test["checkpoint"].endswith("model.pt")
    return val, test


def _infer(bundle, tmp, input_dir, n_out, softmax=True):
    """Run inference.json with the trained model.pt on a folder; returns the (N, n_out) probabilities."""
    monai.bundle.run(
        config_file=os.path.join(REPO, "bundles", bundle, "configs", "inference.json"),
        bundle_root=os.path.join(REPO, "bundles", bundle),
        ckpt_dir=str(tmp / "models"),
        output_dir=str(tmp / "infer"),
        input_dir=str(input_dir),
        image_size=32,
    )
    rows = list(csv.reader(open(tmp / "infer" / "predictions.csv")))
    header, rows = rows[0], rows[1:]
    assert header[0] == "image" and header[-1] == "predicted" and len(header) == n_out + 2
    probs = torch.tensor([[float(v) for v in r[1:-1]] for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()
    if softmax:  # the predicted column is the most probable class
        assert [r[-1] for r in rows] == [header[1 + int(i)] for i in probs.argmax(1)]
    if softmax:
        torch.testing.assert_close(probs.sum(1), torch.ones(len(rows)), atol=1e-4, rtol=0)
    return probs


def _check_single_label(val, test, n_classes, n_val, n_test):
    assert val["key_metric"] == "accuracy"
    for metrics in (val, test):  # accuracy is what the confusion matrix says
        cm = torch.tensor(metrics["final"]["confusion_matrix"])
        assert metrics["final"]["accuracy"] == pytest.approx(float(cm.trace()) / float(cm.sum()))
    assert torch.tensor(val["final"]["confusion_matrix"]).shape == (n_classes, n_classes)
    assert torch.tensor(val["final"]["confusion_matrix"]).sum() == n_val
    assert torch.tensor(test["final"]["confusion_matrix"]).sum() == n_test
    assert len(test["final"]["recall_per_class"]) == n_classes


def test_isic2018_bundle(tmp_path):
    from monai_rd.datasets import ISIC2018_CLASSES

    rng = np.random.default_rng(0)
    root = tmp_path / "ISIC2018"
    per_class = {"Training": 2, "Validation": 1, "Test": 1}
    n = 24306
    for split, k in per_class.items():
        in_dir = root / f"ISIC2018_Task3_{split}_Input"
        gt_dir = root / f"ISIC2018_Task3_{split}_GroundTruth"
        gt_dir.mkdir(parents=True)
        rows = []
        for c in range(len(ISIC2018_CLASSES)):
            for _ in range(k):
                image_id = f"ISIC_{n:07d}"
                n += 1
                _picture(str(in_dir / f"{image_id}.jpg"), rng, mode="RGB")
                rows.append([image_id] + ["1.0" if j == c else "0.0" for j in range(len(ISIC2018_CLASSES))])
        (in_dir / "LICENSE.txt").write_text("CC-BY-NC")  # the official zips ship these beside the images
        (in_dir / "ATTRIBUTION.txt").write_text("ISIC")
        with open(gt_dir / f"ISIC2018_Task3_{split}_GroundTruth.csv", "w", newline="") as f:
            csv.writer(f).writerows([["image", *ISIC2018_CLASSES]] + rows)
    val, test = _train_and_evaluate("rd_isic2018", _overrides("rd_isic2018", root, tmp_path), tmp_path)
    _check_single_label(val, test, 7, n_val=7, n_test=7)
    assert val["class_names"] == list(ISIC2018_CLASSES)
    assert len(_infer("rd_isic2018", tmp_path, root / "ISIC2018_Task3_Test_Input", 7)) == 7  # RGB JPEGs


def test_covid_ct_bundle(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "COVID-CT"
    counts = {"train": 4, "val": 2, "test": 2}
    for cls, sub in (("CT_COVID", "COVID"), ("CT_NonCOVID", "NonCOVID")):
        split_dir = root / "Data-split" / sub
        split_dir.mkdir(parents=True)
        i = 0
        for split, k in counts.items():
            names = []
            for _ in range(k):
                # file names like the real ones: preprint ids with %, spaces; PNG and JPEG mixed
                name = f"2020.02.{i:02d}.2002158{i}-p6-52%{i}.png" if cls == "CT_COVID" else f"{i} ({i}).jpg"
                mode = "RGB" if i % 3 == 0 else "L"  # some slices are stored as RGB
                _picture(str(root / "Images-processed" / cls / name), rng, mode=mode)
                names.append(name)
                i += 1
            (split_dir / f"{split}{cls}.txt").write_text("\n".join(names) + "\n")
    _picture(str(root / "Images-processed" / "CT_COVID" / "unlisted.png"), rng)  # in no split file: ignored
    val, test = _train_and_evaluate("rd_covid_ct", _overrides("rd_covid_ct", root, tmp_path), tmp_path)
    _check_single_label(val, test, 2, n_val=4, n_test=4)


def test_btc_bundle(tmp_path):
    from monai_rd.datasets import BTC_CLASSES

    rng = np.random.default_rng(2)
    root = tmp_path / "brain-tumor-mri-dataset"
    abbrev = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}
    for part, prefix, k in (("Training", "Tr", 5), ("Testing", "Te", 1)):
        for cls in BTC_CLASSES:
            for i in range(k):
                _picture(str(root / part / cls / f"{prefix}-{abbrev[cls]}_{i:04d}.jpg"), rng, mode="RGB")
    tmp = tmp_path
    val, test = _train_and_evaluate("rd_btc", _overrides("rd_btc", root, tmp), tmp)
    _check_single_label(val, test, 4, n_val=4, n_test=4)  # round(5 * 0.15) = 1 validation image per class
    saved = json.load(open(tmp / "models" / "datalist.json"))
    assert saved["classes"] == list(BTC_CLASSES)
    assert all(it["image"].startswith("Training") for s in ("training", "validation") for it in saved[s])
    assert all(it["image"].startswith("Testing") for it in saved["test"])


def test_chestxray_bundle_is_multi_label_with_mean_auc(tmp_path):
    from monai_rd.datasets import CHESTXRAY14_FINDINGS

    rng = np.random.default_rng(3)
    root = tmp_path / "ChestX-ray14"
    first, second = "|".join(CHESTXRAY14_FINDINGS[:7]), "|".join(CHESTXRAY14_FINDINGS[7:])
    rows, train_val, test = [], [], []
    for patient in range(1, 9):
        # every patient: one image with the first 7 findings, one with the other 7, one with none, so any
        # whole-patient validation split has a positive and a negative for every finding
        for follow_up, labels in enumerate((first, second, "No Finding")):
            name = f"{patient:08d}_{follow_up:03d}.png"
            folder = f"images_{1 + (patient - 1) // 4:03d}"  # the Kaggle layout: images_001/images, images_002/images
            _picture(str(root / folder / "images" / name), rng, mode="RGBA" if patient == 1 else "L")
            rows.append([name, labels, follow_up, patient, 50, "M", "PA", 40, 40, 0.143, 0.143, ""])
            (test if patient > 6 else train_val).append(name)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""])
        w.writerows(rows)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")

    val, test_m = _train_and_evaluate("rd_chestxray", _overrides("rd_chestxray", root, tmp_path), tmp_path)
    saved = json.load(open(tmp_path / "models" / "datalist.json"))
    labels = [it["label"] for s in ("training", "validation", "test") for it in saved[s]]
    assert all(len(lab) == 14 and set(lab) <= {0.0, 1.0} for lab in labels)
    assert max(sum(lab) for lab in labels) == 7  # multi-hot, not one-hot
    patients = {s: {os.path.basename(it["image"])[:8] for it in saved[s]} for s in ("training", "validation", "test")}
    assert patients["validation"] and not patients["training"] & patients["validation"]
    for metrics in (val, test_m):
        assert metrics["key_metric"] == "auc"
        per_finding = metrics["final"]["auc_per_finding"]
        assert len(per_finding) == 14  # macro AUC is the mean of the findings' AUCs
        assert metrics["final"]["auc"] == pytest.approx(sum(per_finding) / 14)
        assert "accuracy" not in metrics["final"] and "confusion_matrix" not in metrics["final"]
    assert val["class_names"] == list(CHESTXRAY14_FINDINGS)
    probs = _infer("rd_chestxray", tmp_path, root / "images_002", 14, softmax=False)  # sigmoid per finding
    assert len(probs) == 12
