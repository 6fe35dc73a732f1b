"""benchmarks/bench_speed.py on a tiny configuration of the demo bundle: the JSON it writes is complete and sane."""

import importlib.util
import json
import math
import os
import statistics

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_speed.py")
CONFIGS = os.path.join(REPO, "bundles", "rd_demo", "configs")
MODES = ("student_alone", "rd_live", "rd_cached")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_speed")
    full = json.load(open(os.path.join(CONFIGS, "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 2, "validation": 1, "test": 1}.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    with open(tmp / "datalist.json", "w") as f:
        json.dump(sub, f)
    out = tmp / "result.json"
    bench = _load_bench()
    returned = bench.main(
        [
            "--override", f"datalist_json={tmp / 'datalist.json'}",
            "--override", "image_size=32",
            "--override", "batch_size=4",
            "--epochs", "2",
            "--live_epochs", "1",
            "--warmup_iters", "1",
            "--max_iters", "2",
            "--latency_batches", "1,2",
            "--latency_repeats", "3",
            "--json", str(out),
        ]
    )
    written = json.load(open(out))
    return returned, written, sub


def test_json_has_every_key(result):
    _, res, _ = result
    for key in (
        "machine", "config", "timing", "seconds_per_epoch", "ratio_live", "ratio_cached", "cache", "peak_memory_mb",
        "peak_memory_method", "cache_memory_mb", "inference", "params", "total_seconds",
    ):
        assert key in res, key
    for key in ("platform", "cpu_model", "cpu_count", "torch", "device", "device_name"):
        assert res["machine"][key], key
    assert res["config"]["image_size"] == 32 and res["config"]["batch_size"] == 4
    assert res["config"]["reprogrammer_def"]["_target_"] == "monai_rd.networks.ReprogrammingNet"


def test_times_and_ratios(result):
    _, res, _ = result
    t = res["timing"]
    assert t["iters_per_epoch"] == 2 and t["batch_size"] == 4
    assert t["timed_epochs"] == {"student_alone": 2, "rd_live": 1, "rd_cached": 2}
    for mode in MODES:
        epochs = t["epoch_seconds"][mode]
        assert all(s > 0 for s in epochs)
        assert res["seconds_per_epoch"][mode] == pytest.approx(statistics.median(epochs))
        assert res["peak_memory_mb"][mode] >= 0
    sec = res["seconds_per_epoch"]
    assert res["ratio_live"] == pytest.approx(sec["rd_live"] / sec["student_alone"])
    assert res["ratio_cached"] == pytest.approx(sec["rd_cached"] / sec["student_alone"])
    rb = res["robustness"]
    assert rb["ratio_cached_min"] == pytest.approx(min(t["epoch_seconds"]["rd_cached"]) / min(t["epoch_seconds"]["student_alone"]))
    assert len(rb["ratio_cached_per_round"]) == 2 and rb["ratio_cached_per_round_median"] > 0
    assert sorted(t["timed_order"]) == sorted(["student_alone"] * 2 + ["rd_live"] + ["rd_cached"] * 2)


def test_cache_build_reported_separately(result):
    _, res, sub = result
    c = res["cache"]
    assert c["build_seconds"] > 0
    assert c["items"] == len(sub["training"]) == 10
    assert c["nbytes"] > 0 and res["cache_memory_mb"] == pytest.approx(c["nbytes"] / 2**20)


def test_inference_latency_torchscript_and_params(result):
    _, res, _ = result
    inf = res["inference"]
    assert inf["torchscript_matches_eager"] is True
    assert inf["torchscript_max_abs_diff"] <= 1e-4
    for model in ("student_eager", "student_torchscript", "teacher"):
        assert set(inf["latency_ms"][model]) == {"1", "2"}
        assert all(v > 0 and math.isfinite(v) for v in inf["latency_ms"][model].values())
    p = res["params"]
    assert p["student_with_head"] == p["student_backbone"] + p["head"] > 0
    assert p["teacher"] > 0 and p["reprogrammer"] > 0
    assert p["teacher_over_student"] == pytest.approx(p["teacher"] / p["student_with_head"])


def test_returned_equals_written(result):
    returned, written, _ = result
    assert json.loads(json.dumps(returned, default=str)) == written
