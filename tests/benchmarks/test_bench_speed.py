"""benchmarks/bench_speed.py on tiny configurations of the demo bundle (2D classification) and of rd_brain_segment
(3D segmentation, DenseRDTrainer): the JSON it writes is complete and sane, and every mode ran what it is named for."""

import importlib.util
import json
import math
import os
import statistics

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_speed.py")
CONFIGS = os.path.join(REPO, "bundles", "rd_demo", "configs")
SEGMENT_CONFIGS = os.path.join(REPO, "bundles", "rd_brain_segment", "configs")
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
    assert res["config"]["trainer"] == "monai_rd.engines.RDTrainer"


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
    fastest = {mode: min(t["epoch_seconds"][mode]) for mode in MODES}
    assert rb["ratio_cached_min"] == pytest.approx(fastest["rd_cached"] / fastest["student_alone"])
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


def _assert_modes_ran_what_they_are_named_for(res, timed_iters, rd_trainer):
    """Catches a mode timed under the wrong name: a student alone that builds or runs the teacher, Phi or the cache,
    a live mode served by the cache, a cached mode that runs the teacher, or RD's trainer not used for RD."""
    # teacher / Phi forwards counted during the timed epochs: (a) neither, (b) both once per iteration, (c) Phi only
    ran = {mode: res["modes"][mode]["ran"] for mode in MODES}
    assert {m: r["timed_iterations"] for m, r in ran.items()} == timed_iters
    assert ran["student_alone"]["trainer"] == "DistillationTrainer"
    assert ran["rd_live"]["trainer"] == ran["rd_cached"]["trainer"] == rd_trainer
    assert (ran["student_alone"]["teacher_forwards"], ran["student_alone"]["reprogrammer_forwards"]) == (0, 0)
    alone = ran["student_alone"]
    assert not alone["has_teacher"] and not alone["has_reprogrammer"] and not alone["has_feature_cache"]
    n_live = timed_iters["rd_live"]
    assert (ran["rd_live"]["teacher_forwards"], ran["rd_live"]["reprogrammer_forwards"]) == (n_live, n_live) != (0, 0)
    assert not ran["rd_live"]["has_feature_cache"]
    n_cached = timed_iters["rd_cached"]
    assert (ran["rd_cached"]["teacher_forwards"], ran["rd_cached"]["reprogrammer_forwards"]) == (0, n_cached)
    assert ran["rd_cached"]["has_feature_cache"]


def test_demo_modes_ran_what_they_are_named_for(result):
    _, res, _ = result
    _assert_modes_ran_what_they_are_named_for(res, {"student_alone": 4, "rd_live": 2, "rd_cached": 4}, "RDTrainer")


class _Ran:
    """A stand-in for a ModeRun after its timed epochs: only what check_modes reads."""

    def __init__(self, components):
        self._components = components

    def components(self):
        return self._components


def test_check_modes_refuses_swapped_modes(result):
    """Catches a check that lets a mode through whose counts belong to another mode, a student alone that built
    anything teacher-side (teacher, Phi, cache) without calling it, and a live mode that holds the cache."""
    _, res, _ = result
    bench = _load_bench()
    ran = {mode: res["modes"][mode]["ran"] for mode in MODES}
    assert bench.check_modes({m: _Ran(ran[m]) for m in MODES}) == ran
    swaps = {
        "student_alone": {"student_alone": "rd_cached", "rd_live": "rd_live", "rd_cached": "student_alone"},
        "rd_live": {"student_alone": "student_alone", "rd_live": "rd_cached", "rd_cached": "rd_live"},
    }
    for wrong, swap in swaps.items():
        with pytest.raises(RuntimeError, match=f"{wrong}: "):
            bench.check_modes({m: _Ran(ran[swap[m]]) for m in MODES})
    for built in ("has_teacher", "has_reprogrammer", "has_feature_cache"):
        kept = {**ran, "student_alone": {**ran["student_alone"], built: True}}
        with pytest.raises(RuntimeError, match="student_alone: the mode built a teacher, Φ or feature cache"):
            bench.check_modes({m: _Ran(kept[m]) for m in MODES})
    cached_live = {**ran, "rd_live": {**ran["rd_live"], "has_feature_cache": True}}
    with pytest.raises(RuntimeError, match="rd_live must train without the feature cache"):
        bench.check_modes({m: _Ran(cached_live[m]) for m in MODES})



@pytest.fixture(scope="module")
def drd_result(result, tmp_path_factory):
    """The same tiny demo run with ``--drd``: Deep RD live and cached beside (a), (b) and (c)."""
    _, _, sub = result
    tmp = tmp_path_factory.mktemp("bench_speed_drd")
    with open(tmp / "datalist.json", "w") as f:
        json.dump(sub, f)
    return _load_bench().main(
        [
            "--drd",
            "--override", f"datalist_json={tmp / 'datalist.json'}",
            "--override", "image_size=32",
            "--override", "batch_size=4",
            "--epochs", "2",
            "--warmup_iters", "1",
            "--max_iters", "2",
            "--latency_batches", "1",
            "--latency_repeats", "3",
        ]
    )


def test_drd_modes_ran_what_they_are_named_for_and_their_ratios(result, drd_result):
    """Catches ``--drd`` timing DRD under the wrong name: the live mode served by the stage-map cache, the cached
    mode running the teacher, a projector not run once per iteration, or DRD's ratios not those of its epochs."""
    res = json.loads(json.dumps(drd_result, default=str))
    _assert_modes_ran_what_they_are_named_for(res, {"student_alone": 4, "rd_live": 2, "rd_cached": 4}, "RDTrainer")
    ran = {mode: res["modes"][mode]["ran"] for mode in ("drd_live", "drd_cached")}
    n_proj = res["drd_projectors"]
    assert n_proj == ran["drd_cached"]["projectors"] == ran["drd_live"]["projectors"] == 4  # ResNet18's 4 stages
    assert ran["drd_live"]["trainer"] == ran["drd_cached"]["trainer"] == "DRDTrainer"
    assert (ran["drd_live"]["teacher_forwards"], ran["drd_live"]["reprogrammer_forwards"]) == (2, 2 * n_proj)
    assert (ran["drd_cached"]["teacher_forwards"], ran["drd_cached"]["reprogrammer_forwards"]) == (0, 4 * n_proj)
    assert ran["drd_cached"]["has_feature_cache"] and not ran["drd_live"]["has_feature_cache"]
    sec = res["seconds_per_epoch"]
    assert res["ratio_drd_cached"] == pytest.approx(sec["drd_cached"] / sec["student_alone"])
    assert res["ratio_drd_live"] == pytest.approx(sec["drd_live"] / sec["student_alone"])
    assert res["drd_cache"]["items"] == len(result[2]["training"]) and res["drd_cache"]["nbytes"] > 0
    assert sorted(res["timing"]["timed_order"]) == sorted(
        ["student_alone"] * 2 + ["rd_live"] + ["drd_live"] + ["rd_cached"] * 2 + ["drd_cached"] * 2
    )


# ------------------------------------------------------------------------------ 3D segmentation (dense RD)


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_speed_segment")
    full = json.load(open(os.path.join(REPO, "bundles", "rd_brain_segment", "data", "datalist.json")))
    sub = {"training": full["training"][1:3], "validation": full["validation"][:1], "test": full["test"][:1]}
    with open(tmp / "datalist.json", "w") as f:
        json.dump(sub, f)
    # a scripted stand-in for the 3D CT teacher (the real one is tested in tests/networks/teachers/test_astra.py):
    # a stride-4 map, so the dense Phi resamples it to the student's decoder map as with the real teacher
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv3d(3, 6, 4, stride=4), torch.nn.ReLU())
    torch.jit.script(teacher).save(str(tmp / "teacher.ts"))
    out = tmp / "result.json"
    returned = _load_bench().main(
        [
            "--config_file", os.path.join(SEGMENT_CONFIGS, "train.json"),
            "--override", f"datalist_json={tmp / 'datalist.json'}",
            "--override", f"teacher_name=torchscript:{tmp / 'teacher.ts'}",
            "--override", "teacher_input_size=[16, 32, 8]",
            "--override", "student_channels=[4, 8]",
            "--override", "student_strides=[2]",
            "--override", "phi_hidden=8",
            "--override", "roi_size=[24, 48, 16]",
            "--epochs", "2",
            "--live_epochs", "1",
            "--warmup_iters", "1",
            "--latency_batches", "1,2",
            "--latency_repeats", "3",
            "--json", str(out),
        ]
    )
    return returned, json.load(open(out)), sub


def test_segment_modes_ran_what_they_are_named_for(segment):
    _, res, sub = segment
    assert res["config"]["trainer"] == "monai_rd.engines.DenseRDTrainer" and res["config"]["spatial_dims"] == 3
    # 2 training volumes at batch 1: a full epoch is 2 iterations (no --max_iters)
    assert res["timing"]["iters_per_epoch"] == len(sub["training"]) == 2 and res["timing"]["batch_size"] == 1
    _assert_modes_ran_what_they_are_named_for(res, {"student_alone": 4, "rd_live": 2, "rd_cached": 4}, "DenseRDTrainer")


def test_segment_times_cache_and_ratios(segment):
    _, res, sub = segment
    sec = res["seconds_per_epoch"]
    for mode in MODES:
        assert sec[mode] == pytest.approx(statistics.median(res["timing"]["epoch_seconds"][mode])) and sec[mode] > 0
    assert res["ratio_live"] == pytest.approx(sec["rd_live"] / sec["student_alone"])
    assert res["ratio_cached"] == pytest.approx(sec["rd_cached"] / sec["student_alone"])
    assert res["cache"]["items"] == len(sub["training"]) and res["cache"]["build_seconds"] > 0
    assert res["cache"]["nbytes"] > 0


def test_segment_latency_on_whole_volumes_through_the_sliding_window(segment):
    returned, res, _ = segment
    inf = res["inference"]
    # one preprocessed training volume (C, D, H, W), not a 2D image of the bundle's size
    assert inf["input_shape"] == [1, 40, 96, 16]
    assert inf["student_inferer"] == "SlidingWindowInferer" and res["config"]["inferer"] == "SlidingWindowInferer"
    assert inf["torchscript_matches_eager"] is True
    for model in ("student_eager", "student_torchscript", "teacher"):
        assert set(inf["latency_ms"][model]) == {"1", "2"}
        assert all(v > 0 and math.isfinite(v) for v in inf["latency_ms"][model].values())
    p = res["params"]
    assert p["student_name"] == "unet" and p["teacher"] == 3 * 6 * 4**3 + 6  # the stand-in teacher's conv
    assert p["reprogrammer"] > 0 and p["student_with_head"] == p["student_backbone"] + p["head"] > 0
    assert json.loads(json.dumps(returned, default=str)) == res
