"""benchmarks/bench_throughput.py on a few demo images at a small size: the JSON's fields and their consistency."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_throughput.py")
MODES = ("student_alone", "rd_cached", "rd_live", "student_compute_bound", "teacher_cache_build")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "throughput-test.json"
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    returned = bench.main(
        ["--train_images", "6", "--image_size", "32", "--batch_size", "3", "--epochs", "1", "--warmup_iters", "1",
         "--json", str(out)]
    )
    return returned, json.load(open(out))


@pytest.mark.slow  # about 35 s on 2 busy cores: three bundle builds (teacher, caches) and four timed modes
def test_json_reports_every_mode_and_the_workload(result):
    returned, written = result
    assert returned["ratios"] == written["ratios"]
    w = written["workload"]
    assert (w["image_size"], w["train_images"], w["batch_size"], w["iters_per_epoch"]) == (32, 6, 3, 2)
    assert set(written["images_per_second"]) == set(MODES)
    assert all(v > 0 for v in written["images_per_second"].values())
    assert all(len(written["epoch_seconds"][m]) == 1 for m in MODES[:4])
    assert written["teacher_cache_build"]["images"] == 6
    for key in ("cpu_model", "torch", "device", "OMP_NUM_THREADS"):
        assert key in written["machine"]


@pytest.mark.slow
def test_images_per_second_and_ratios_agree_with_the_timings(result):
    """Catches a ratio inverted or taken from the wrong modes, and images/s not from iterations x batch / time."""
    _, res = result
    ips, sec = res["images_per_second"], res["epoch_seconds"]
    for mode in MODES[:4]:
        assert ips[mode] == pytest.approx(2 * 3 / sec[mode][0])
    build = res["teacher_cache_build"]
    assert ips["teacher_cache_build"] == pytest.approx(build["images"] / build["seconds"])
    r = res["ratios"]
    assert r["rd_cached_over_student_alone"] == pytest.approx(ips["rd_cached"] / ips["student_alone"])
    assert r["rd_live_over_student_alone"] == pytest.approx(ips["rd_live"] / ips["student_alone"])
    assert r["student_alone_over_compute_bound"] == pytest.approx(ips["student_alone"] / ips["student_compute_bound"])
