"""Every bundle's configs/multi_gpu_train.json over its train.json, and the demo run as typed with torchrun (2 CPU ranks)."""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser
from monai.utils import optional_import

from monai_rd.engines import RDTrainer
from monai_rd.engines.data_parallel import distributed_data_parallel
from monai_rd.errors import OptionError, find_rd_error
from demo_subset import write_demo_subset  # tests/bundles, on sys.path under pytest

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
    module, name = parser["train#trainer#_target_"].rsplit(".", 1)
    trainer_cls = optional_import(module, name=name)[0]
    assert issubclass(trainer_cls, RDTrainer)
    assert "init_process_group" in parser["device"]  # joining the group outside torchrun is tested elsewhere
    parser["device"] = "$torch.device('cpu')"
    parallel = parser.get_parsed_content("train#trainer#parallel", instantiate=True)
    assert isinstance(parallel, functools.partial) and parallel.func is distributed_data_parallel
    assert parser["train#dataloader#shuffle"] is False
    assert parser["train#dataloader#sampler"].replace("::", "#") == "@train#sampler"
    assert parser["validate#sampler#even_divisible"] is False  # no duplicated validation image in the metrics
    assert parser.get_parsed_content("opt#dist_timeout") == 1800.0
    parser["dist_timeout"] = "soon"
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of a config expression
        parser.get_parsed_content("opt#dist_timeout", lazy=False)
    assert isinstance(find_rd_error(raised.value), OptionError) and "dist_timeout" in str(find_rd_error(raised.value))


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
