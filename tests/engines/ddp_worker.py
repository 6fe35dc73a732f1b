"""Run by tests/engines/test_data_parallel.py under ``torchrun`` (2 processes, gloo, CPU); not a test module.

Usage: ``torchrun --standalone --nproc_per_node=2 ddp_worker.py <scenario> <out_dir> [data_dir]``; each rank
writes ``<out_dir>/rank<r>.json`` (and weights for ``train``).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import weakref

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from monai_rd.bundle import distributed
from monai_rd.data import TeacherFeatureCache
from monai_rd.data.feature_cache import build_cache_once
from monai_rd.engines import RDTrainer
from monai_rd.engines.data_parallel import distributed_data_parallel
from monai_rd.errors import OutputFolderError
from monai_rd.losses import RDLoss
from monai_rd.networks import StudentClassifier

GLOBAL_BATCH, ITERATIONS, CLASSES = 8, 3, 3


class CountingTeacher(nn.Module):
    """A frozen 'teacher' (fixed conv) that counts the images it was run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.conv(x)


def build(seed: int = 0) -> dict:
    """Student (no BatchNorm: CPU has no SyncBatchNorm), Phi, teacher, SGD and RD loss without CKA.

    CKA is a statistic of the whole batch, so per-rank CKA is not the global batch's; with gamma=0 every loss
    term is a per-sample mean and DDP's averaged gradient equals the global batch's exactly.
    """
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student = StudentClassifier(backbone=backbone, num_classes=CLASSES, num_features=6)
    phi = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    opt = torch.optim.SGD([*student.parameters(), *phi.parameters()], lr=0.5, momentum=0.9)
    loss = RDLoss(alpha=1.0, beta=1.0, gamma=0.0, tau=4.0)
    return dict(network=student, reprogrammer=phi, teacher=CountingTeacher(), optimizer=opt, loss_function=loss)


def global_batches() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    return [
        {
            "image": torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g),
            "label": torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g),
        }
        for _ in range(ITERATIONS)
    ]


def train(rank: int, world: int, released: list | None = None) -> dict[str, torch.Tensor]:
    """ITERATIONS steps on this rank's contiguous share of each global batch; the trained weights.

    ``released`` (if given) gets whether the DDP wrapper was freed once the run ended (it must not hold the
    process group until interpreter exit).
    """
    parts = build()
    share = GLOBAL_BATCH // world
    batches = [{k: v[rank * share : (rank + 1) * share] for k, v in b.items()} for b in global_batches()]
    parallel = (lambda m: distributed_data_parallel(m, "cpu")) if world > 1 else None
    trainer = RDTrainer(device="cpu", max_epochs=1, train_data_loader=batches, parallel=parallel, **parts)
    wrapper = weakref.ref(trainer.trainable_step)
    trainer.run()
    if released is not None:
        gc.collect()  # as distributed.shutdown does
        released.append(wrapper() is None and not isinstance(trainer.trainable_step, DistributedDataParallel))
    return {
        f"{k}.{n}": t.detach().clone() for k in ("network", "reprogrammer") for n, t in parts[k].state_dict().items()
    }


def load_item(item: dict) -> dict:
    """The cache's transform: a .npy image (module-level, so a pickled cache can be sent to another rank)."""
    return {"image": torch.from_numpy(np.load(item["image"])).float()}


def cache_once(data_dir: str, cache_dir: str | None) -> tuple[int, list[float]]:
    """Build a cache over the images with build_cache_once; (teacher images here, served checksums)."""
    teacher = CountingTeacher()
    data = [{"image": os.path.join(data_dir, f)} for f in sorted(os.listdir(data_dir)) if f.endswith(".npy")]
    cache = TeacherFeatureCache(teacher, load_item, cache_dir=cache_dir, batch_size=3, dtype=torch.float32)
    build_cache_once(cache, data)
    rows = [cache.index(d["image"]) for d in data]
    return teacher.images, cache.gather(rows, "cpu").flatten(1).sum(1).tolist()


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    if scenario == "hang":
        distributed.init_process_group(timeout_s=float(sys.argv[3]))
        if dist.get_rank() == 1:
            time.sleep(120)  # a rank that hangs: rank 0's next collective must time out, not wait forever
        dist.barrier()
        return
    distributed.init_process_group(timeout_s=60)
    rank, world = dist.get_rank(), dist.get_world_size()
    result: dict = {"rank": rank, "world": world}
    released: list[bool] = []
    torch.save(train(rank, world, released), os.path.join(out_dir, f"weights{rank}.pt"))
    result["ddp_released"] = released[0]
    data_dir = sys.argv[3]
    result["ram"] = cache_once(data_dir, None)
    result["disk"] = cache_once(data_dir, os.path.join(out_dir, "cache"))

    def refuse() -> None:
        raise OutputFolderError("previous run in the way")

    try:
        distributed.on_rank0(refuse)
    except OutputFolderError as e:
        result["on_rank0_error"] = str(e)
    result["on_rank0_value"] = distributed.on_rank0(lambda: dist.get_rank() + 41)
    result["fingerprint"] = distributed.run_fingerprint({"epochs": 1})
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    distributed.shutdown()


if __name__ == "__main__":
    main()
