"""Every bundle's configs/multi_gpu_train.json over its train.json, and the demo run as typed with torchrun
(2 CPU ranks)."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from demo_subset import write_demo_subset  # tests/bundles, on sys.path under pytest
from monai.bundle import ConfigParser

from monai_rd.engines import DistillationTrainer
from monai_rd.engines.data_parallel import distributed_data_parallel
from monai_rd.errors import OptionError, find_rd_error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES = sorted(
    os.path.join(REPO, "bundles", b)
    for b in os.listdir(os.path.join(REPO, "bundles"))
    if os.path.isfile(os.path.join(REPO, "bundles", b, "configs", "overrides.json"))
)


def _files(bundle):
    return os.path.join(bundle, "configs", "train.json"), os.path.join(bundle, "configs", "multi_gpu_train.json")


def test_every_bundle_has_the_overlay():
    assert {"rd_demo", "rd_brain_segment", "rd_busi"} <= {os.path.basename(b) for b in BUNDLES}
    assert all(os.path.isfile(_files(b)[1]) for b in BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES, ids=os.path.basename)
def test_overlay_parses_with_train_json(bundle):
    """Catches an overlay id whose parent train.json lacks (it would add a stray key, e.g. a sampler nobody uses),
    a reference to a missing id, train.json's initialize lost (a later file replaces the list), the trainer not
    taking `parallel`, and imports replaced instead of extended."""
    train, overlay = _files(bundle)
    single = ConfigParser()
    single.read_config(train)
    parser = ConfigParser()
    parser.read_config([train, overlay])
    over = json.load(open(overlay))
    for key in over:
        config_id = key.lstrip("+")
        if "#" in config_id:
            parent = config_id.rsplit("#", 1)[0]
            assert parent in single, f"{key}: train.json has no {parent!r}"
    for ref in set(re.findall(r"@([\w#]+)", json.dumps(over))):
        assert ref in parser, f"{overlay} refers to @{ref}, which the merged config lacks"
    assert parser["initialize"] == ["$@device", *single["initialize"]]
    assert set(single["imports"]) < set(parser["imports"])
    assert parser["finalize"] == ["$monai_rd.bundle.distributed.shutdown()"]
    assert parser["train#trainer#_target_"] == "$@method_def.trainer"  # the method builds it, taking `parallel`
    assert "init_process_group" in parser["device"]  # joining the group outside torchrun is tested elsewhere
    parser["device"] = "$torch.device('cpu')"
    trainer_cls = parser.get_parsed_content("method_def").trainer_class
    assert issubclass(trainer_cls, DistillationTrainer)
    # `parallel` itself is taken by every trainer through DistillationTrainer: the torchrun tests below train with it
    parallel = parser.get_parsed_content("train#trainer#parallel", instantiate=True)
    assert isinstance(parallel, functools.partial) and parallel.func is distributed_data_parallel
    assert parser["train#dataloader#shuffle"] is False
    assert parser["train#dataloader#sampler"].replace("::", "#") == "@train#sampler"
    assert parser["validate#sampler#even_divisible"] is False  # no duplicated validation image in the metrics
    assert parser["dist_timeout"] == 1800
    parser["device"] = json.load(open(overlay))["device"]
    parser["dist_timeout"] = "soon"
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of a config expression
        parser.get_parsed_content("device", lazy=False)
    assert isinstance(find_rd_error(raised.value), OptionError) and "dist_timeout" in str(find_rd_error(raised.value))


def _torchrun_cli(tmp, name, *extra) -> list[str]:
    b = "bundles/rd_demo/configs"
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", f"['{b}/train.json','{b}/multi_gpu_train.json']",
        "--datalist_json", str(tmp / "datalist.json"), "--ckpt_dir", str(tmp / name / "models"),
        "--output_dir", str(tmp / name / "eval"), "--epochs", "3", "--image_size", "32", "--batch_size", "4",
        "--dist_timeout", "120", *extra,
    ]


def _env() -> dict:
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))  # monai_rd, installed or not
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL to every process of a 2-rank run after its second checkpoint, then `--resume true` with torchrun.

    Catches a checkpoint loaded on rank 0 only (DDP broadcasts rank 0's weights, but rank 1's optimizer would
    restart empty and its augmentation RNG from the seed, so its gradients, averaged into rank 0's, would differ),
    DistributedSampler restarting from epoch 0's order, the optimizer or scheduler state not restored, and a
    partly written checkpoint taken for a complete one.
    """
    write_demo_subset(tmp_path / "datalist.json", {"training": 4, "validation": 2, "test": 1})
    done = subprocess.run(_torchrun_cli(tmp_path, "whole"), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    killed = tmp_path / "killed" / "models"
    proc = subprocess.Popen(_torchrun_cli(tmp_path, "killed"), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "checkpoint_epoch=2.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, as a node failure would
    proc.wait()
    assert (killed / "checkpoint_epoch=2.pt").exists(), "the run ended before its second checkpoint"
    assert not (killed / "checkpoint_epoch=3.pt").exists(), "the run finished before it was killed"
    done = subprocess.run(_torchrun_cli(tmp_path, "killed", "--resume", "true"), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    whole = torch.load(tmp_path / "whole" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    resumed = torch.load(killed / "checkpoint_epoch=3.pt", weights_only=True)
    for part in ("network", "reprogrammer", "optimizer"):
        flat_w = torch.utils._pytree.tree_flatten(whole[part])[0]
        flat_r = torch.utils._pytree.tree_flatten(resumed[part])[0]
        assert len(flat_w) == len(flat_r)
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(flat_w, flat_r)), part
    assert (tmp_path / "whole" / "models" / "model.pt").read_bytes() == (killed / "model.pt").read_bytes()
    metrics = [json.load(open(tmp_path / r / "eval" / "val_metrics.json")) for r in ("whole", "killed")]
    assert metrics[0]["history"] == metrics[1]["history"] and len(metrics[1]["history"]) == 3


@pytest.mark.slow
def test_demo_trains_with_torchrun_on_two_cpu_ranks(tmp_path):
    """The README's command on the demo (20 training, 10 validation images, 1 epoch, 2 gloo ranks).

    Catches validation metrics from rank 0's half only (5 images) or with DistributedSampler's padding
    duplicates, logs and files written by every rank, an epoch as long as in one process (the data not split),
    and a checkpoint without the world size in its fingerprint.
    """
    write_demo_subset(tmp_path / "datalist.json", {"training": 4, "validation": 2, "test": 1})
    b = "bundles/rd_demo/configs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", f"['{b}/train.json','{b}/multi_gpu_train.json']",
        "--datalist_json", str(tmp_path / "datalist.json"), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "eval"), "--epochs", "1", "--image_size", "32", "--batch_size", "4",
    ]
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))  # monai_rd, installed or not
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    models, evals = tmp_path / "models", tmp_path / "eval"
    assert sorted(os.listdir(models)) == ["checkpoint_epoch=1.pt", "model.pt", "model_meta.json"]
    assert sorted(os.listdir(evals)) == ["training_curve.png", "val_metrics.json"]
    # 20 images over 2 ranks in batches of 4: 2 iterations per rank, logged once (rank 0)
    assert len(re.findall(r"Epoch: 1/1, Iter: \d/2 --", log)) == 2
    assert log.count("Saved checkpoint at epoch: 1") == 1
    val = json.load(open(evals / "val_metrics.json"))
    (epoch,) = val["history"]
    cm = np.array(epoch["confusion_matrix"])
    assert cm.sum() == 10 and cm.sum(1).tolist() == [2] * 5  # both ranks' halves, each image once
    assert epoch["accuracy"] == pytest.approx(np.trace(cm) / 10)
    ckpt = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["run_state"]["fingerprint"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["network"])  # the plain student, loadable in one process
    model = torch.load(models / "model.pt", weights_only=True)
    assert model.keys() == ckpt["network"].keys()
