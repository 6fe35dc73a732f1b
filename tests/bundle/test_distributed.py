"""The multi-process helpers in a single process (plain calls) and their rank-dependent choices.

The same helpers over two real processes: tests/engines/test_data_parallel.py and tests/bundles/test_multi_gpu_train.py.
"""

import pickle

import pytest
import torch
import torch.nn as nn
from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler

from monai_rd.bundle import distributed
from monai_rd.data import TeacherFeatureCache
from monai_rd.data.feature_cache import build_cache_once
from monai_rd.errors import DistributedRunError, OptionError, OutputFolderError
from monai_rd.handlers import CrashSafeCheckpointSaver, MetricsFromEvaluator, MetricsJSONWriter, TrainingCurvePlotter
from monai_rd.utils import ranks


def _bare(cls):
    return object.__new__(cls)  # isinstance is all the filter looks at


def test_single_process_helpers_are_plain_calls():
    """Catches a single-process run changed by the shared train.json entries (fingerprint, rank-0 calls)."""
    assert not ranks.is_distributed() and ranks.rank() == 0 and ranks.world_size() == 1
    assert ranks.on_rank0(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(OutputFolderError, match="in the way"):
        ranks.on_rank0(lambda: (_ for _ in ()).throw(OutputFolderError("in the way")))
    assert ranks.run_fingerprint({"epochs": 3}) == {"epochs": 3}  # old checkpoints still resume
    assert distributed.shard_size(21) == 21
    handlers = [_bare(StatsHandler), _bare(ValidationHandler), None]
    assert distributed.for_this_rank(handlers) == handlers[:2]


def test_other_ranks_keep_only_handlers_that_write_nothing(monkeypatch):
    """Catches a rank > 0 writing checkpoints, metrics, curves or logs, or dropping a schedule or the validation
    (whose metrics every rank must compute for the all-reduce)."""
    keep = [_bare(LrScheduleHandler), _bare(ValidationHandler), _bare(MetricsFromEvaluator)]
    drop = [_bare(StatsHandler), _bare(CrashSafeCheckpointSaver), _bare(MetricsJSONWriter), _bare(TrainingCurvePlotter)]
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.for_this_rank([drop[0], keep[0], drop[1], keep[1], drop[2], keep[2], drop[3]]) == keep
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(ranks, "world_size", lambda: 4)
    assert distributed.shard_size(21) == 6  # DistributedSampler(even_divisible=True) pads to 24
    assert distributed.epoch_length(21, 3) == 2  # each rank's shard of 6 in full batches of 3
    assert ranks.run_fingerprint({"epochs": 3}) == {"epochs": 3, "world_size": 4}


def test_joining_outside_torchrun_names_the_command(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedRunError, match="torchrun --nproc_per_node"):
        distributed.init_process_group()
    for var, value in (
        ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1")
    ):
        monkeypatch.setenv(var, value)
    for bad in (0, -5, "soon", None):
        with pytest.raises(OptionError, match="dist_timeout"):
            distributed.init_process_group(timeout_s=bad)


def _teacher():
    torch.manual_seed(0)
    return nn.Conv2d(1, 2, 3)


def _load(item):
    return {"image": torch.full((1, 6, 6), float(item["value"]))}


def test_adopted_cache_serves_the_builders_rows_without_a_teacher(tmp_path):
    """Catches another rank's copy serving other rows than rank 0's build, or adopting a cache of other views."""
    items = []
    for i in range(3):
        p = tmp_path / f"img{i}.txt"
        p.write_text(str(i))
        items.append({"image": str(p), "value": i})
    built = TeacherFeatureCache(_teacher(), _load, dtype=torch.float32).build(items)
    sent = pickle.loads(pickle.dumps(built))  # what broadcast_object_list hands the other ranks
    counting = nn.Conv2d(1, 2, 3)
    counting.register_forward_hook(lambda *a: pytest.fail("the adopting rank ran its teacher"))
    other = TeacherFeatureCache(counting, _load, dtype=torch.float32).adopt(sent)
    rows = [other.index(it["image"]) for it in items]
    assert rows == [built.index(it["image"]) for it in items]
    assert torch.equal(other.gather(rows, "cpu"), built.gather(rows, "cpu"))
    assert build_cache_once(other, items) is other  # single process: build() finds every item held
    with pytest.raises(ValueError, match="view"):
        TeacherFeatureCache(counting, _load, views=2, augment=lambda d: d).adopt(sent)
