"""The MONAI Label app over HTTP as clients use it (a real `monailabel start_server` on 127.0.0.1): path traversal and
absolute paths refused everywhere a client names a file, each bad request answered with its status and reason,
uploads removed, no server path in any answer, and segmentation models trained from label maps saved as 3D Slicer
saves them, then served without a restart, 2D and 3D.

One server for the module (a classification bundle with a model, one without, a 2D and a 3D segmentation bundle),
its served folders, sentinel files and temporary folder under the test's folder; the checks run in file order.
"""

import hashlib
import json
import os
import shutil
import sys
import urllib.parse

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')
requests = pytest.importorskip("requests")
from label_server import LabelServer, free_port, server_env  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from tiny_models import (  # noqa: E402
    DEMO,
    DEMO_CLASSES,
    REPO,
    SEG2D,
    SEG3D,
    brain_slices,
    demo_pngs,
    write_classifier,
    write_segmenter,
)

from demo_data.brain_segment import SEGMENT_CLASSES  # noqa: E402

pytestmark = [pytest.mark.label, pytest.mark.slow]

BUSI = os.path.join(REPO, "bundles", "rd_busi")  # served without a model.pt: the 409 case
TRAIN_TIMEOUT, TASK_TIMEOUT = 600, 300
ANSWERS = []  # every answer's text, checked for server paths at the end


def _keep(answer):
    ANSWERS.append(answer.text if answer.request.method != "HEAD" else "")
    return answer


def _tiny_teacher(path):
    # a scripted stand-in for the 3D CT encoder (as tests/bundles/test_rd_brain_segment.py): a stride-4 map
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 6, 4, stride=4), torch.nn.ReLU())
    torch.jit.script(net).save(str(path))
    return f"torchscript:{path}"


def _snapshot(folder, skip):
    """Every file and folder under `folder` (but `skip`) with its size, mtime and content hash."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames:
            seen[os.path.join(dirpath, name)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            s = os.stat(path)
            seen[path] = (s.st_size, s.st_mtime_ns, hashlib.sha256(open(path, "rb").read()).hexdigest())
    return seen


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label_requests")
    root = tmp / "root"
    studies, sentinel, models = root / "studies", root / "sentinel", root / "models"
    pngs = demo_pngs(studies)
    slices = brain_slices(studies, SEG2D, 4)
    volumes = brain_slices(studies, SEG3D, 3, prefix="vol_")
    shutil.copy(get_testdata_file("CT_small.dcm"), studies / "CT_small.dcm")
    write_classifier(models / "rd_demo")
    (models / "rd_busi").mkdir(parents=True)
    write_segmenter(models / "rd_brain_segment_2d", SEG2D)
    write_segmenter(models / "rd_brain_segment", SEG3D)
    sentinel.mkdir()
    shutil.copy(studies / f"{pngs[0]}.png", sentinel / "secret.png")
    (sentinel / "notes.json").write_text('{"label": "frontal"}')
    tiny = {"student_channels": [4, 8], "student_strides": [2]}
    options = {"rd_brain_segment_2d": tiny,
               "rd_brain_segment": {**tiny, "phi_hidden": 8, "teacher_name": _tiny_teacher(root / "teacher.ts"),
                                    "teacher_input_size": [16, 32, 8]}}
    (root / "train_options.json").write_text(json.dumps(options))
    app = tmp / "app"
    shutil.copytree(os.path.join(REPO, "apps", "monailabel"), app, ignore=shutil.ignore_patterns("__pycache__"))
    server_tmp = tmp / "server_tmp"
    server_tmp.mkdir()
    names = {"rd_demo": DEMO, "rd_busi": BUSI, "rd_brain_segment_2d": SEG2D, "rd_brain_segment": SEG3D}
    cmd = ["monailabel", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "bundle", ",".join(names.values()),
           "--conf", "models", ",".join(f"{n}={models / n}" for n in names),
           "--conf", "train_options", str(root / "train_options.json"), "--conf", "keep_runs", "2",
           "--host", "127.0.0.1", "--port", str(free_port())]
    # uploads go to the server's own temporary folder (checked empty below); no scoring at start-up competing for
    # the 2 cores; sessions under the test's folder
    env = server_env(TMPDIR=server_tmp, MONAI_LABEL_AUTO_UPDATE_SCORING="false",
                     MONAI_LABEL_SESSION_PATH=tmp / "sessions")
    with LabelServer(cmd, tmp, tmp / "server.log", env) as server:
        at_start = set(os.listdir(server_tmp))  # MONAI Label's logging config, the app's upload folder
        yield {"server_tmp_at_start": at_start, "server": server, "url": server.url, "tmp": tmp, "root": root,
               "studies": studies, "sentinel": sentinel, "models": models, "pngs": pngs, "slices": slices,
               "volumes": volumes, "server_tmp": server_tmp}


def _get(served, path, **kw):
    return _keep(requests.get(served["url"] + path, timeout=60, **kw))


def _put_label(served, image, tag="final", name="label.json", content=b'{"label": "frontal"}', params=None):
    return _keep(requests.put(f"{served['url']}/datastore/label", params={"image": image, "tag": tag},
                              data={"params": json.dumps(params or {})}, files={"label": (name, content)},
                              timeout=60))


def _infer(served, model, image=None, upload=None, params=None, output="json"):
    query = {"output": output, **({"image": image} if image is not None else {})}
    files = {"file": upload} if upload else None
    return _keep(requests.post(f"{served['url']}/infer/{model}", params=query,
                               data={"params": json.dumps(params or {})}, files=files, timeout=120))


def _uploads_left(served):
    """What requests left in the server's temporary folder: nothing beside what it held at start, nothing in the
    app's upload folder (task subprocesses remove their own when they end)."""
    assert set(os.listdir(served["server_tmp"])) == served["server_tmp_at_start"]
    (uploads,) = [e for e in served["server_tmp_at_start"] if e.startswith("monai_rd_label_")]
    return os.listdir(served["server_tmp"] / uploads)


def test_traversal_and_absolute_paths_are_refused_at_every_endpoint(served):
    """Catches a client writing, reading, scoring or deleting a file outside the studies folder through an image
    id, a tag, a model name or a session id (`PUT /datastore/label?tag=../../../../tmp/x/pwn` wrote there)."""
    url, pngs, sentinel = served["url"], served["pngs"], served["sentinel"]
    secret = str(sentinel / "secret.png")
    before = _snapshot(served["root"], skip={str(served["studies"])})
    png = open(secret, "rb").read()
    bad_tags = ["../../sentinel/pwn", "../../../sentinel", str(sentinel / "abs"), "..", "a/b"]
    bad_ids = ["../sentinel/secret", secret, "../" + pngs[0], str(sentinel)]
    refused = []
    for tag in bad_tags:
        for name in ("x.json", "x.sh"):
            refused.append(_put_label(served, pngs[0], tag=tag, name=name))
        refused.append(_keep(requests.delete(f"{url}/datastore/label", params={"id": pngs[0], "tag": tag}, timeout=30)))
        refused.append(_get(served, "/datastore/label", params={"label": pngs[0], "tag": tag}))
        refused.append(_get(served, "/datastore/label/info", params={"label": pngs[0], "tag": tag}))
        refused.append(_keep(requests.put(f"{url}/datastore/label/info", params={"label": pngs[0], "tag": tag},
                                          data={"info": "{}"}, timeout=30)))
        refused.append(_keep(requests.post(f"{url}/activelearning/random", json={"label_tag": tag}, timeout=30)))
        refused.append(_keep(requests.post(f"{url}/train/rd_demo", params={"run_sync": "true"},
                                           json={"label_tag": tag}, timeout=60)))
    for image in bad_ids:
        refused.append(_put_label(served, image))
        refused.append(_keep(requests.put(f"{url}/datastore/image", params={"image": image},
                                          files={"file": ("x.png", png)}, timeout=30)))
        refused.append(_get(served, "/datastore/image", params={"image": image}))
        refused.append(_keep(requests.head(f"{url}/datastore/image", params={"image": image}, timeout=30)))
        refused.append(_get(served, "/datastore/image/info", params={"image": image}))
        refused.append(_keep(requests.put(f"{url}/datastore/image/info", params={"image": image},
                                          data={"info": "{}"}, timeout=30)))
        refused.append(_keep(requests.delete(f"{url}/datastore/image", params={"id": image}, timeout=30)))
        refused.append(_infer(served, "rd_demo", image=image))
        refused.append(_infer(served, "rd_demo", image=pngs[0], params={"image": image}))
        refused.append(_infer(served, "rd_brain_segment_2d", image=image, output="image"))
    for name in ("..", "../studies", secret):
        quoted = urllib.parse.quote(name, safe="").replace(".", "%2E")  # else the client resolves the dots
        for method, path in (("post", f"/infer/{quoted}?image={pngs[0]}"), ("post", f"/train/{quoted}"),
                             ("post", f"/batch/infer/{quoted}"), ("post", f"/activelearning/{quoted}"),
                             ("get", f"/session/{quoted}"), ("delete", f"/session/{quoted}")):
            refused.append(_keep(getattr(requests, method)(url + path, timeout=30)))
    for answer in refused:
        assert 400 <= answer.status_code < 500, (answer.request.method, answer.url, answer.status_code, answer.text)
    statuses = {a.status_code for a in refused}
    assert statuses <= {400, 404, 405, 422}, statuses
    assert any(a.status_code == 400 and "is not a name" in a.json()["detail"] for a in refused if a.text)

    # a training whose datalist names a tag with a path: the task fails in its subprocess, writing nothing
    started = _keep(requests.post(f"{url}/train/rd_demo", json={"label_tag": "../../sentinel/t"}, timeout=60))
    assert started.status_code == 200
    task = served["server"].wait_task("train", TASK_TIMEOUT)
    assert task["status"] == "ERROR" and any("is not a name" in line for line in task["details"]), task["details"]
    ANSWERS.append(json.dumps(task))

    assert _snapshot(served["root"], skip={str(served["studies"])}) == before  # nothing created, changed, removed
    assert not list(served["studies"].rglob("*pwn*")) and _uploads_left(served) == []


def test_bad_requests_get_their_status_and_reason(served):
    """Catches the bare 500s: an unknown image or model, an unreadable or empty upload, output=image on a
    classification model, a model with no model.pt, batch inference on a CPU, and a label of an unknown class
    saved with 200 (found only by the next training)."""
    pngs = served["pngs"]
    answer = _infer(served, "rd_demo", image="no_such_image")
    assert answer.status_code == 404 and "'no_such_image' is not in the datastore" in answer.json()["detail"]
    answer = _infer(served, "no_such_model", image=pngs[0])
    assert answer.status_code == 404 and "'no_such_model' is not served" in answer.json()["detail"]
    for name, content in (("notes.png", b"just text"), ("empty.png", b""), ("scan.nii.gz", b"\x1f\x8bnot gzip")):
        answer = _infer(served, "rd_demo", upload=(name, content))
        assert answer.status_code == 422, (name, answer.status_code, answer.text)
        assert answer.json()["detail"]
    answer = _infer(served, "rd_busi", image=pngs[0])
    assert answer.status_code == 409 and "no trained model to serve yet" in answer.json()["detail"]
    answer = _infer(served, "rd_demo", image=pngs[0], params={"device": "tpu:3"})
    assert answer.status_code == 422 and "tpu:3" in answer.json()["detail"]

    # output=image on a classification model: the scores as a JSON file
    answer = _infer(served, "rd_demo", image=pngs[0], output="image")
    assert answer.status_code == 200, answer.text
    as_file = answer.json()
    assert as_file["label"] in DEMO_CLASSES and sorted(as_file["scores"]) == sorted(DEMO_CLASSES)
    by_json = _infer(served, "rd_demo", image=pngs[0]).json()
    assert by_json["label"] == as_file["label"] and by_json["model"] == "rd_demo"

    answer = _put_label(served, pngs[1], content=b'{"label": "liver"}')
    assert answer.status_code == 422 and "'liver' is not one of the classes" in answer.json()["detail"]
    answer = _put_label(served, pngs[1], params={"label": "kidney"})
    assert answer.status_code == 422 and "kidney" in answer.json()["detail"]
    answer = _put_label(served, pngs[1], name="run.sh", content=b"echo")
    assert answer.status_code == 422 and "not '.sh'" in answer.json()["detail"]
    answer = _keep(requests.put(f"{served['url']}/session/", params={"uncompress": "true"},
                                files={"files": ("a.zip", b"PK")}, timeout=30))
    assert answer.status_code == 422 and "uncompress" in answer.json()["detail"]
    assert _put_label(served, pngs[1], params={"label": "frontal"}).status_code == 200

    # batch inference on this CPU-only machine: every PNG scored and saved as its `original` label
    started = _keep(requests.post(f"{served['url']}/batch/infer/rd_demo", params={"images": "all"},
                                  json={"images": pngs}, timeout=60))
    assert started.status_code == 200, started.text
    task = served["server"].wait_task("batch/infer", TASK_TIMEOUT)
    assert task["status"] == "DONE", task["details"]
    ANSWERS.append(json.dumps(task))
    objects = _get(served, "/datastore/", params={"output": "all"}).json()["objects"]
    assert all(objects[i]["labels"]["original"]["info"]["params"]["model"] == "rd_demo" for i in pngs)
    assert _uploads_left(served) == []  # the failed uploads above were removed, not left in the folder


def test_the_classification_model_through_monai_labels_python_client(served, tmp_path):
    """Catches a classification model that a standard client cannot use: MONAI Label's own Python client lists it,
    fetches a sample, saves a class label with params, and gets the scores (and the JSON file) from inference."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(served["url"], tmpdir=str(tmp_path))
    info = client.info()
    assert info["models"]["rd_demo"]["type"] == "classification" and info["models"]["rd_demo"]["labels"] == DEMO_CLASSES
    sample = client.next_sample("first", {})
    assert sample["id"] in served["pngs"] + list(served["slices"]) + list(served["volumes"]) + ["CT_small"]
    label = tmp_path / "label.json"
    label.write_text(json.dumps({"label": "occipital"}))
    saved = client.save_label(served["pngs"][2], str(label), tag="final", params={"label": "occipital"})
    assert saved["image"] == served["pngs"][2]
    image_out, params = client.infer("rd_demo", served["pngs"][2], {})
    assert params["label"] in DEMO_CLASSES and sorted(params["scores"]) == sorted(DEMO_CLASSES)
    assert json.load(open(image_out))["label"] == params["label"]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _as_slicer_saves(truth, out, three_d):
    """A label map as 3D Slicer's MONAI Label module saves it: NIfTI on the image's grid (a 2D image's map as a
    one-slice volume)."""
    label = nib.load(truth)
    data = np.asarray(label.dataobj)
    nib.save(nib.Nifti1Image(data if three_d else data[..., None], label.affine), out)
    return out


@pytest.mark.parametrize("model, images_key", [("rd_brain_segment_2d", "slices"), ("rd_brain_segment", "volumes")])
def test_label_maps_saved_over_http_train_a_segmentation_model_that_is_served_at_once(served, model, images_key):
    """Catches label maps drawn in a client not reaching the segmentation recipe, a trained model not served
    without a restart, train_stats left empty, and a served label map off the input's grid (the 2D map on a 1 mm
    identity grid instead of the input's 2 mm)."""
    info = _get(served, "/info/").json()
    entry = info["models"][model]
    # what 3D Slicer's module lists and draws with: a segmentation model, its labels without the background
    assert entry["type"] == "segmentation" and entry["labels"] == {n: i for i, n in enumerate(SEGMENT_CLASSES) if i}
    assert model in info["trainers"] and f"entropy_{model}" in info["strategies"]
    images = served[images_key]
    segments = [{"name": n, "idx": i} for i, n in enumerate(SEGMENT_CLASSES) if i]
    for image_id, truth in images.items():
        label = _as_slicer_saves(truth, served["tmp"] / f"{image_id}_label.nii.gz", images_key == "volumes")
        answer = _put_label(served, image_id, name="label.nii.gz", content=open(label, "rb").read(),
                            params={"label_info": segments, "model": model})
        assert answer.status_code == 200, answer.text
    served_model = served["models"] / model / "model.pt"
    before = _sha(served_model)

    started = _keep(requests.post(f"{served['url']}/train/{model}",
                                  json={"max_epochs": 2, "force_publish": True, "val_split": 0.3}, timeout=60))
    assert started.status_code == 200, started.text
    task = served["server"].wait_task("train", TRAIN_TIMEOUT)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    ANSWERS.append(json.dumps(task))
    result = json.loads(next(line for line in task["details"] if "Result: " in line).split("Result: ", 1)[1])
    assert result["training"] + result["validation"] == len(images) and result["published"]
    assert result["metric"] == "mean_dice" and 0.0 <= result["val_metric"] <= 1.0

    stats = _get(served, "/info/").json()["train_stats"][model]
    assert stats["epoch"] == stats["total_epochs"] == 2 and "total_time" in stats and stats["published"]
    assert [h["epoch"] for h in stats["history"]] == [1, 2]
    assert all(h["loss"] > 0 and 0.0 <= h["mean_dice"] <= 1.0 for h in stats["history"])
    assert stats["key_metric"]["name"] == "mean_dice" and stats["run"] == result["run"]

    after = _sha(served_model)
    assert after != before
    image_id = next(iter(images))
    answer = _infer(served, model, image=image_id, output="all")
    assert answer.status_code == 200, answer.text[:300]
    params_part, image_part = _multipart(answer)
    assert json.loads(params_part)["model_sha256"] == after  # the new model answered, without a restart
    out = served["tmp"] / f"{model}_answer.nii.gz"
    out.write_bytes(image_part)
    got, source = nib.load(out), nib.load(served["studies"] / f"{image_id}.nii.gz")
    assert got.shape == source.shape and np.allclose(got.affine, source.affine), (got.affine, source.affine)
    assert set(np.unique(np.asarray(got.dataobj))) <= set(range(len(SEGMENT_CLASSES)))


def _multipart(answer):
    """The `params` JSON and the `image` bytes of MONAI Label's multipart answer (output=all)."""
    from requests_toolbelt.multipart import decoder

    parts = decoder.MultipartDecoder.from_response(answer).parts
    by_name = {p.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: p.content for p in parts}
    return by_name["params"].decode(), by_name["image"]


def test_scoring_and_strategies_over_http(served):
    """Catches the strategies MONAI Label answered 500 for (first, an uncertainty one), a scoring method that fills
    no score, and a path in the strategy's answer."""
    started = _keep(requests.post(f"{served['url']}/scoring/entropy_rd_demo", json={}, timeout=60))
    assert started.status_code == 200, started.text
    task = served["server"].wait_task("scoring", TASK_TIMEOUT)
    assert task["status"] == "DONE", task["details"]
    objects = _get(served, "/datastore/", params={"output": "all"}).json()["objects"]
    unlabelled = sorted(i for i, o in objects.items() if "final" not in o["labels"])
    scores = {i: _get(served, "/datastore/image/info", params={"image": i}).json().get("entropy_rd_demo")
              for i in unlabelled}
    pngs = {i: v for i, v in scores.items() if i in served["pngs"]}
    assert len(pngs) >= 2 and all(v is not None for v in pngs.values())  # every unlabelled PNG scored
    pick = _keep(requests.post(f"{served['url']}/activelearning/entropy_rd_demo", json={}, timeout=30)).json()
    best = max((v if v is not None else 0.0, i) for i, v in scores.items())[1]
    assert pick["id"] == best and pick["score"] == pytest.approx(scores[best])
    first = _keep(requests.post(f"{served['url']}/activelearning/first", json={}, timeout=30)).json()
    assert first["id"] == unlabelled[0]
    for answer in (pick, first):
        assert "path" not in answer or not os.path.isabs(answer["path"])
    answer = _keep(requests.post(f"{served['url']}/activelearning/epistemic", json={}, timeout=30))
    assert answer.status_code == 404 and "entropy_rd_demo" in answer.json()["detail"]


def test_no_answer_names_a_server_path(served):
    """Catches absolute server paths in answers: the served model file, the strategy's image path, the datastore's
    training list, a task's request or log lines, a reader's error naming its file."""
    for path in ("/info/", "/datastore/?output=all", "/datastore/?output=train", "/train/?all=true",
                 "/batch/infer/?all=true", "/scoring/?all=true"):
        ANSWERS.append(_get(served, path).text)
    roots = [str(served["tmp"]), REPO, sys.prefix, os.path.realpath(str(served["tmp"])), "/tmp/", "/root/"]
    leaks = [(root, text[max(0, text.find(root) - 80): text.find(root) + 80]) for text in ANSWERS for root in roots
             if root in text]
    assert not leaks, leaks[:5]
    assert len(ANSWERS) > 100
