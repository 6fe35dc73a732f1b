"""rd_classify end to end: the commands of its docs/README.md, run as typed on class folders of real DICOM files.

The class folders hold real DICOM test files of pydicom and of pydicom-data (the dev extra), which pydicom 3 and 2.4
both find offline (CT, MR, US; gray, RGB, YBR, palette colour, multi-frame, JPEG 2000, JPEG and deflate compressed,
an overlay, one without a file extension), a real 3D NIfTI volume of nibabel's test data and a
demo PNG. Only the placeholders are replaced, and tiny sizes are appended to the train command.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "bundles", "rd_classify", "docs", "README.md")
DEMO_PNG = os.path.join(REPO, "bundles", "rd_demo", "data", "frontal")
TINY = "--epochs 1 --image_size 32 --batch_size 4 --num_workers 0"

pytestmark = pytest.mark.slow


def doc_commands():
    """The commands of the docs' bash block under "From a folder of DICOM files to a deployed model"."""
    section = open(DOCS).read().split("## From a folder of DICOM files to a deployed model", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _class_folders(root):
    files = {
        "ct": ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "image_dfl.dcm"],
        "mr": ["MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"],
        # US1_J2KR.dcm would be US1_UNCR's pixels again: make_datalist refuses that leak between splits
        "us": ["US1_UNCR.dcm", "color3d_jpeg_baseline.dcm", "OBXXXX1A.dcm", "GDCMJ2K_TextGBR.dcm"],
    }
    for cls, names in files.items():
        os.makedirs(root / cls)
        for name in names:
            target = "IM0001" if name == "693_J2KI.dcm" else name  # exported without an extension
            shutil.copy(get_testdata_file(name), root / cls / target)
    shutil.copy(os.path.join(str(data_path), "anatomical.nii"), root / "mr" / "anatomical.nii")
    shutil.copy(os.path.join(DEMO_PNG, sorted(os.listdir(DEMO_PNG))[0]), root / "mr" / "patch.png")
    return root


def test_the_documented_commands_train_evaluate_predict_and_export(tmp_path):
    commands = doc_commands()
    assert [c.split()[2] for c in commands] == [
        "monai_rd.make_datalist", "monai.bundle", "monai.bundle", "monai.bundle", "monai_rd.export"
    ]
    data, run = _class_folders(tmp_path / "class_folders"), tmp_path / "run"
    new = tmp_path / "new_images"
    new.mkdir()
    for src in (get_testdata_file("MR_small_RLE.dcm"), get_testdata_file("SC_rgb_rle.dcm"),
                os.path.join(str(data_path), "reoriented_anat_moved.nii")):
        shutil.copy(src, new)
    shutil.copy(os.path.join(DEMO_PNG, sorted(os.listdir(DEMO_PNG))[1]), new)
    places = {"<class_folders>": str(data), "<run>": str(run), "<new_images>": str(new)}
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for command in commands:
        for placeholder, path in places.items():
            command = command.replace(placeholder, path)
        if "train.json --ckpt_dir" in command:  # the train command only; evaluation takes the model's own values
            command += f" {TINY}"
        done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

    classes = ["ct", "mr", "us"]
    datalist = json.load(open(run / "models" / "datalist.json"))
    assert datalist["classes"] == classes
    assert datalist["class_counts"] == {
        s: {c: n for c in classes} for s, n in (("training", 2), ("validation", 1), ("test", 1))
    }
    assert any(
        it["image"] == os.path.join("ct", "IM0001") for s in ("training", "validation", "test") for it in datalist[s]
    )
    assert os.path.getsize(run / "models" / "model.pt") > 1_000_000
    spec = json.load(open(run / "models" / "model_meta.json"))
    assert spec["class_names"] == classes and spec["image_size"] == 32
    val = json.load(open(run / "eval" / "val_metrics.json"))
    assert val["class_names"] == classes and [h["epoch"] for h in val["history"]] == [1]
    test = json.load(open(run / "eval" / "test_metrics.json"))
    assert test["split"] == "test" and test["class_names"] == classes
    assert torch.tensor(test["final"]["confusion_matrix"]).sum() == 3

    rows = list(csv.reader(open(run / "predictions" / "predictions.csv")))
    assert rows[0] == ["image", *classes, "predicted"]
    assert sorted(os.path.basename(r[0]) for r in rows[1:]) == sorted(os.listdir(new))
    probs = np.array([[float(v) for v in r[1:4]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert [r[4] for r in rows[1:]] == [classes[i] for i in probs.argmax(1)]

    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)})[0]
    assert logits.shape == (2, 3) and np.isfinite(logits).all()
