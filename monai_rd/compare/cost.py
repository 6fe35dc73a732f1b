"""What a trained run deploys: its parameter count and its CPU latency, measured on the bundle's own network."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["deployed_cost"]


def deployed_cost(
    bundle: str,
    method: str,
    student: str,
    ckpt_dir: str,
    overrides: Mapping[str, Any] | None = None,
    repeats: int = 30,
) -> dict[str, float]:
    """Parameters and single-image CPU latency of the model a run deploys.

    The network is built from the bundle's ``train.json`` and ``evaluate.json`` with the run's options, exactly as
    evaluation builds it, and loaded from the run's ``models/model.pt``: the student and its head, or for
    ``--method probe`` the teacher and its probe (the teacher's parameters count, since deploying the probe deploys
    the teacher).
    Latency: one image of the trained size and channels (``models/model_meta.json``), batch 1, one CPU thread,
    eval mode, no gradient; the median of ``repeats`` calls after 3 warm-up calls.

    Args:
        bundle: the bundle folder.
        method: the run's ``--method``.
        student: the run's ``--student``.
        ckpt_dir: the run's ``models`` folder.
        overrides: the grid's other options.
        repeats: timed calls.

    Returns:
        ``{"params": ..., "latency_ms": ...}``.
    """
    from monai.bundle import ConfigParser

    with open(os.path.join(ckpt_dir, "model_meta.json")) as f:
        spec = json.load(f)
    parser = ConfigParser()
    # evaluate.json over train.json, as evaluation reads them: its network is what the method deploys, built from
    # the trained model's spec (train.json's own network is the training one, which needs the teacher)
    parser.read_config([os.path.join(bundle, "configs", f) for f in ("train.json", "evaluate.json")])
    parser.update({**dict(overrides or {}), "bundle_root": bundle, "method": method, "student": student})
    parser.update({"device": "$torch.device('cpu')", "ckpt_dir": ckpt_dir})
    parser.update({k: spec[k] for k in ("class_names", "image_size", "in_channels") if k in spec})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(os.path.join(ckpt_dir, "model.pt"), map_location="cpu", weights_only=True))
    network.eval()
    params = sum(p.numel() for p in network.parameters())
    size = int(spec["image_size"])
    x = torch.rand(1, int(spec["in_channels"]), *([size] * int(spec.get("spatial_dims", 2))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.no_grad():
            for i in range(3 + repeats):
                start = time.perf_counter()
                network(x)
                if i >= 3:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {"params": float(params), "latency_ms": 1000.0 * statistics.median(times)}
