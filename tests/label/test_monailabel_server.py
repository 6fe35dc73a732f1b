"""The MONAI Label app (apps/monailabel) as a user runs it: `monailabel start_server` on 127.0.0.1 over a studies
folder of real demo PNGs and pydicom's DICOM test files, serving the deployed student of a tiny rd_demo run.

Checks /info/, /infer/<model> by image id and by upload against the bundle's own inference.json output (1e-5),
that a training checkpoint is refused, label upload, /train/ to completion on the uploaded labels and the
served model reloaded after it; the server is stopped through its process group in bounded time.
"""

import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')
requests = pytest.importorskip("requests")
from pydicom.data import get_testdata_file  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles"))
from doc_commands import doc_commands  # noqa: E402  (tests/bundles: the README parser shared by the doc tests)
from label_server import LabelServer, free_port, port_is_free, server_env  # noqa: E402

pytestmark = [pytest.mark.label, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
CONFIGS = os.path.join(BUNDLE, "configs")
READMES = (os.path.join("docs", "label.md"), os.path.join("apps", "monailabel", "README.md"))
STUDIES = "my_images"  # the studies folder the READMEs name
DICOMS = {"ct_small": "CT_small.dcm", "mr_small": "MR_small.dcm"}  # pydicom's own CT and MR test files
TRAIN_TIMEOUT = 600


def readme_command() -> str:
    """The `monailabel start_server` command, the same in docs/label.md and the app's README (else the test fails)."""
    commands = {path: doc_commands(path, prefixes=("monailabel start_server",)) for path in READMES}
    assert all(len(c) == 1 for c in commands.values()), commands
    assert len({c[0] for c in commands.values()}) == 1, f"the READMEs give different commands: {commands}"
    command = commands[READMES[0]][0]
    assert f"--studies {STUDIES} " in command and "--host 127.0.0.1" in command, command
    return command


def _run(args, cwd=REPO, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=server_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _bundle_predictions(model_dir, images_dir, out_dir) -> dict:
    """The bundle's own inference (inference.json as its docs run it): file name -> (scores, predicted)."""
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(CONFIGS, "inference.json"),
          "--ckpt_dir", model_dir, "--input_dir", images_dir, "--output_dir", out_dir])
    with open(os.path.join(out_dir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    names = [c for c in rows[0] if c not in ("image", "predicted")]
    return {os.path.basename(r["image"]): ({c: float(r[c]) for c in names}, r["predicted"]) for r in rows}


def _id(file_name: str) -> str:
    return file_name.split(".")[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny trained rd_demo student, a studies folder, and a running `monailabel start_server`."""
    tmp = tmp_path_factory.mktemp("monailabel")
    full = json.load(open(os.path.join(CONFIGS, "datalist.json")))
    classes = full["classes"]
    per_class = {"training": 2, "validation": 1, "test": 2}
    sub = {"classes": classes, "seed": full["seed"]}
    for split, k in per_class.items():
        sub[split] = [i for c in range(len(classes)) for i in [x for x in full[split] if x["label"] == c][:k]]
    json.dump(sub, open(tmp / "datalist.json", "w"))
    # the README's command runs as typed from a scratch copy of the repository layout it names (apps/monailabel,
    # bundles/rd_demo with its models/ folder, my_images), so that training never replaces anything in the repo
    work = tmp / "work"
    shutil.copytree(os.path.join(REPO, "apps", "monailabel"), work / "apps" / "monailabel",
                    ignore=shutil.ignore_patterns("__pycache__", "bin", "lib", "logs", "model"))
    shutil.copytree(BUNDLE, work / "bundles" / "rd_demo", ignore=shutil.ignore_patterns("models"))
    models = work / "bundles" / "rd_demo" / "models"
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(CONFIGS, "train.json"),
          "--ckpt_dir", str(models), "--output_dir", str(tmp / "eval"), "--datalist_json", str(tmp / "datalist.json"),
          "--epochs", "1", "--batch_size", "5", "--image_size", "32"])

    # the studies: the demo's test-split PNGs (not trained on) and two real DICOM files; a copy for inference.json,
    # since the server adds its own files (labels/, datastore_v2.json) to the studies folder
    studies, images = work / STUDIES, tmp / "images"
    studies.mkdir()
    labels = {}
    for item in sub["test"]:
        src = os.path.join(BUNDLE, "data", item["image"])  # the demo datalist is relative to its data folder
        name = f"{classes[item['label']]}_{os.path.basename(src)}"
        shutil.copy(src, studies / name)
        labels[_id(name)] = classes[item["label"]]
    for i, (image_id, test_file) in enumerate(DICOMS.items()):
        shutil.copy(get_testdata_file(test_file), studies / f"{image_id}.dcm")
        labels[image_id] = classes[i]  # any class: the point is that DICOM files go through training
    shutil.copytree(studies, images)

    cmd = shlex.split(readme_command())
    port = int(cmd[cmd.index("--port") + 1])
    if not port_is_free(port):  # the only change ever made to the typed command: another server holds its port
        cmd[cmd.index("--port") + 1] = str(free_port())
    # no scoring at start-up or after training: it would compete with the checks for the 2 cores
    env = server_env(MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    with LabelServer(cmd, work, tmp / "server.log", env) as running:
        yield {"url": running.url, "tmp": tmp, "models": str(models), "studies": studies, "images": str(images),
               "labels": labels, "classes": classes, "server": running}


def _infer(server, image_id=None, upload=None, params=None):
    url = f"{server['url']}/infer/rd_demo"
    data = {"params": json.dumps(params or {})}
    if upload:
        with open(upload, "rb") as f:
            return requests.post(url, params={"output": "json"}, data=data,
                                 files={"file": (os.path.basename(upload), f)}, timeout=120)
    return requests.post(url, params={"image": image_id, "output": "json"}, data=data, timeout=120)


def _check_scores_equal_the_bundle(server, out_dir):
    expected = _bundle_predictions(server["models"], server["images"], out_dir)
    assert len(expected) == len(server["labels"])
    for name, (scores, predicted) in expected.items():
        answer = _infer(server, image_id=_id(name))
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert list(got["scores"]) == server["classes"]
        for c in server["classes"]:
            assert abs(got["scores"][c] - scores[c]) < 1e-5, (name, c, got["scores"][c], scores[c])
        assert got["label"] == predicted and got["activation"] == "softmax"
        assert [p["label"] for p in got["prediction"]] == server["classes"]
        assert abs(sum(got["scores"].values()) - 1) < 1e-5
    return expected


def test_info_lists_the_bundle_as_a_classification_model_and_a_trainer(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["rd_demo"]
    assert model["type"] == "classification" and model["labels"] == server["classes"] and model["config"]["trained"]
    assert "rd_demo" in info["trainers"]
    assert info["datastore"]["total"] == len(server["labels"])  # PNG and DICOM files are both listed


def test_infer_by_id_and_by_upload_equals_the_bundles_inference(server):
    expected = _check_scores_equal_the_bundle(server, str(server["tmp"] / "pred_before"))
    for name in (next(n for n in expected if n.endswith(".png")), "ct_small.dcm"):
        by_upload = _infer(server, upload=os.path.join(server["images"], name))
        assert by_upload.status_code == 200, by_upload.text
        for c in server["classes"]:
            assert abs(by_upload.json()["scores"][c] - expected[name][0][c]) < 1e-5


def test_a_training_checkpoint_is_refused(server):
    assert any(f.startswith("checkpoint_epoch=") for f in os.listdir(server["models"]))
    answer = _infer(server, image_id="ct_small", params={"model_filename": "checkpoint_epoch=1.pt"})
    assert answer.status_code == 409
    assert "not a deployed student" in answer.json()["detail"] and "model.pt" in answer.json()["detail"]


def test_labels_uploaded_train_to_completion_and_the_new_model_is_served(server):
    url = server["url"]
    for i, (image_id, class_name) in enumerate(sorted(server["labels"].items())):
        label_file = server["tmp"] / f"{image_id}.json"
        label_file.write_text(json.dumps({"label": class_name}))
        # half give the class in the label's info (params), half only in the label file
        params = {"label": class_name} if i % 2 else {}
        with open(label_file, "rb") as f:
            saved = requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": "final"},
                                 data={"params": json.dumps(params)}, files={"label": (label_file.name, f)}, timeout=60)
        assert saved.status_code == 200, saved.text
    before = hashlib.sha256(open(os.path.join(server["models"], "model.pt"), "rb").read()).hexdigest()

    # the bundle's batch size is 32: without fitting it to the 12 labels an epoch would have no iteration;
    # force_publish: the publish rule (tests/label/test_publish_and_active_learning.py) is not what this checks
    started = requests.post(f"{url}/train/rd_demo", json={"max_epochs": 1, "image_size": 32, "force_publish": True},
                            timeout=60)
    assert started.status_code == 200, started.text
    task = server["server"].wait_task("train", TRAIN_TIMEOUT)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    result = json.loads(next(line for line in task["details"] if "Result: " in line).split("Result: ", 1)[1])
    n = len(server["labels"])
    assert result["training"] + result["validation"] == n and result["validation"] >= 1
    assert result["val_metrics"]["epoch"] == 1 and "accuracy" in result["val_metrics"]  # max_epochs 1, validated
    assert result["published"] and result["publish_reason"] == "force_publish"

    # the new model is served (the old one kept under replaced-*), and still equals the bundle's own inference
    after = hashlib.sha256(open(os.path.join(server["models"], "model.pt"), "rb").read()).hexdigest()
    assert after != before
    kept = [d for d in os.listdir(server["models"]) if d.startswith("replaced-")]
    assert len(kept) == 1 and os.path.isfile(os.path.join(server["models"], kept[0], "model.pt"))
    _check_scores_equal_the_bundle(server, str(server["tmp"] / "pred_after"))
