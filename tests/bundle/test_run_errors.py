"""Failures a user can fix end on one `monai_rd: <Error>: ...` line naming the file or option and what to do, as the
bundle commands are typed (subprocess); a failed data check writes nothing."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from trained_model import REPO, write_trained_model  # tests/bundle, on sys.path under pytest

DEMO = os.path.join(REPO, "bundles", "rd_demo")
CLASSIFY = os.path.join(REPO, "bundles", "rd_classify")
DEMO_DATALIST = os.path.join(DEMO, "configs", "datalist.json")


def _config(bundle, *names):
    files = [os.path.join(bundle, "configs", n) for n in names]
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"


def _run(config, *args, wrapper=None):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *map(str, args)]
    if wrapper is not None:  # the same command line, run by a script that sets up the environment first
        cmd = [sys.executable, wrapper, *cmd[3:]]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def _last(done):
    lines = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("[set MONAI_RD_TRACEBACK")]
    return lines[-1] if lines else ""


def _tiny_datalist(path, per_class=(2, 1, 1), drop_training_class=None):
    full = json.load(open(DEMO_DATALIST))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in zip(("training", "validation", "test"), per_class):
        sub[split] = [
            {**it, "image": os.path.join(DEMO, "data", it["image"])}
            for c in range(5)
            if not (split == "training" and c == drop_training_class)
            for it in [i for i in full[split] if i["label"] == c][:k]
        ]
    json.dump(sub, open(path, "w"))
    return str(path)


def test_evaluating_a_run_folder_without_model_pt_names_it(tmp_path):
    """Catches a raw FileNotFoundError for a run that wrote model_meta.json and no model.pt (it diverged)."""
    write_trained_model("rd_demo", tmp_path / "models")
    os.remove(tmp_path / "models" / "model.pt")
    done = _run(_config(DEMO, "train.json", "evaluate.json"), "--ckpt_dir", tmp_path / "models", "--output_dir",
                tmp_path / "eval", "--datalist_json", _tiny_datalist(tmp_path / "dl.json"))
    assert done.returncode == 1
    assert _last(done).startswith(f"monai_rd: MissingModelError: {tmp_path / 'models' / 'model.pt'} does not exist")
    assert "saved no model" in _last(done) and "--resume true" in _last(done)


@pytest.mark.slow
def test_a_probe_model_is_evaluated_as_such_and_refused_by_inference_and_export(tmp_path):
    """Catches a `--method probe` model evaluated as a student (a state_dict traceback) when --method is not repeated,
    and inference/export of it failing with a key-mismatch traceback instead of saying what the model is."""
    dl = _tiny_datalist(tmp_path / "dl.json")
    common = ["--ckpt_dir", tmp_path / "models", "--datalist_json", dl, "--image_size", 32]
    done = _run(_config(DEMO, "train.json"), *common, "--output_dir", tmp_path / "eval", "--method", "probe",
                "--epochs", 1, "--batch_size", 5, "--num_workers", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(_config(DEMO, "train.json", "evaluate.json"), *common[:2], "--datalist_json", dl, "--output_dir",
                tmp_path / "test")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.load(open(tmp_path / "test" / "test_metrics.json"))["method"] == "probe"
    images = os.path.join(DEMO, "data", "frontal")
    done = _run(_config(DEMO, "inference.json"), "--ckpt_dir", tmp_path / "models", "--input_dir", images,
                "--output_dir", tmp_path / "infer")
    assert done.returncode == 1
    assert _last(done).startswith("monai_rd: CheckpointMismatchError: the model in") and "--method probe" in _last(done)
    assert "Inference and export serve a student" in _last(done)
    assert not os.path.exists(tmp_path / "infer" / "predictions.csv")
    done = subprocess.run(
        [sys.executable, "-m", "monai_rd.export", "--bundle", DEMO, "--ckpt", str(tmp_path / "models" / "model.pt"),
         "--format", "torch_export", "--out", str(tmp_path / "m.pt2"), "--images", images],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1 and "--method probe" in done.stderr and not os.path.exists(tmp_path / "m.pt2")


def _train_with_teacher_weights(tmp_path, weights):
    return _run(_config(DEMO, "train.json"), "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval",
                "--datalist_json", _tiny_datalist(tmp_path / "dl.json"), "--image_size", 32, "--num_workers", 0,
                "--batch_size", 5, "--teacher_weights", weights)


def test_teacher_weights_of_another_architecture_are_named_with_their_keys(tmp_path):
    """Catches the run ending on MONAI's "Failed to instantiate/evaluate" line for a teacher checkpoint of another
    architecture, with torch's list of every key."""
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    done = _train_with_teacher_weights(tmp_path, tmp_path / "resnet18.pth")
    assert done.returncode == 1
    last = _last(done)
    assert last.startswith(f"monai_rd: CheckpointKeyError: checkpoint {tmp_path / 'resnet18.pth'} does not match")
    assert "missing key(s)" in last and "unexpected key(s)" in last and "... and" in last  # summarised


def test_a_pickled_teacher_file_is_refused_with_how_to_convert_it(tmp_path):
    """Catches torch's text (which suggests `weights_only=False`) behind MONAI's generic line for a whole pickled
    model given as --teacher_weights."""
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole_model.pth")
    done = _train_with_teacher_weights(tmp_path, tmp_path / "whole_model.pth")
    assert done.returncode == 1
    last = _last(done)
    assert last.startswith(f"monai_rd: UnsafeCheckpointError: {tmp_path / 'whole_model.pth'} is not a plain weights")
    assert "torch.nn.modules.container.Sequential" in last and "torch.save(model.state_dict()" in last
    assert "weights_only=False" not in done.stderr


FULL_DISK = """import runpy, shutil, sys
real = shutil.disk_usage
shutil.disk_usage = lambda path: real(path)._replace(free=1 << 20)  # this disk has 1 MB left
sys.argv = [sys.argv[0], *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_full_disk_is_found_before_the_first_epoch_naming_the_folder_and_the_space(tmp_path):
    """Catches a full disk found only when the first epoch's checkpoint is written, its ENOSPC buried under MONAI's
    line (the disk is made to look full to the process; the command line is the documented one)."""
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(FULL_DISK)
    done = _run(_config(DEMO, "train.json"), "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval",
                "--datalist_json", _tiny_datalist(tmp_path / "dl.json"), "--image_size", 32, "--num_workers", 0,
                "--method", "student", "--epochs", 1, "--batch_size", 5, wrapper=str(wrapper))
    assert done.returncode == 1, done.stderr[-3000:]
    last = _last(done)
    assert last.startswith(f"monai_rd: DiskFullError: {tmp_path / 'models'} has 1.0 MB free on its disk, but a "
                           "checkpoint and model.pt of this run needs about")
    assert "Epoch[1] Iteration" not in done.stdout + done.stderr
    assert not os.path.exists(tmp_path / "models" / "model.pt")


def _class_folders(root, bad=None):
    for k, cls in enumerate(("a", "b")):
        os.makedirs(root / cls)
        for i in range(6):
            Image.effect_noise((16, 16), 20 + 10 * k + i).save(root / cls / f"{cls}{i}.png")
    if bad:
        (root / "a" / bad).write_bytes(b"\x89PNG\r\n\x1a\n not an image")


@pytest.mark.slow
def test_a_failed_data_check_writes_no_datalist_and_the_fixed_data_is_split_afresh(tmp_path):
    """Catches <ckpt_dir>/datalist.json written with the bad file in it: the rerun after removing the file failed
    with "delete the datalist"."""
    _class_folders(tmp_path / "data", bad="broken.png")
    args = ["--dataset_dir", tmp_path / "data", "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval",
            "--image_size", 32, "--num_workers", 0, "--method", "student", "--epochs", 1, "--batch_size", 2]
    done = _run(_config(CLASSIFY, "train.json"), *args)
    assert done.returncode == 1 and "monai_rd: DataCheckError: 1 problem(s) in the datalist" in done.stderr
    assert "broken.png: cannot be decoded" in done.stderr and not os.path.exists(tmp_path / "models" / "datalist.json")
    os.remove(tmp_path / "data" / "a" / "broken.png")
    done = _run(_config(CLASSIFY, "train.json"), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.load(open(tmp_path / "models" / "datalist.json"))
    assert sum(len(saved[s]) for s in ("training", "validation", "test")) == 12


def test_a_class_without_training_images_is_refused(tmp_path):
    """Catches a run that trains a class it has no training image of (only a warning about undefined recall)."""
    dl = _tiny_datalist(tmp_path / "dl.json", drop_training_class=4)
    done = _run(_config(DEMO, "train.json"), "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval",
                "--datalist_json", dl, "--image_size", 32, "--num_workers", 0, "--batch_size", 4)
    assert done.returncode == 1
    assert "training has no item of class(es) ['temporal']: the model cannot learn them" in done.stderr
    assert "monai_rd: DataCheckError:" in done.stderr and not os.path.exists(tmp_path / "models" / "model_meta.json")


def test_own_data_with_the_demo_bundle_is_told_to_use_its_own_datalist_not_to_delete_the_shipped_one(tmp_path):
    """Catches `rd_demo --dataset_dir <own data>` advising to delete the bundle's shipped configs/datalist.json."""
    _class_folders(tmp_path / "data")
    done = _run(_config(DEMO, "train.json"), "--dataset_dir", tmp_path / "data", "--class_names", "['a','b']",
                "--ckpt_dir", tmp_path / "models", "--output_dir", tmp_path / "eval")
    assert done.returncode == 1
    last = _last(done)
    assert last.startswith("monai_rd: DataCheckError: bundles/rd_demo/configs/datalist.json was written with classes=")
    assert "pass --datalist_json <a new file, e.g. in your --ckpt_dir>" in last and "delete it to re-split" not in last
    assert os.path.isfile(DEMO_DATALIST)
