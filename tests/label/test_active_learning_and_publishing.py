"""Active learning and the publish rule in process: the entropy scores written into the images' info, the order the
strategies serve images in, a worse model kept out of service, old runs pruned."""

import hashlib
import json
import math
import os

import pytest
import torch

pytest.importorskip("monailabel", reason='needs the label extra: pip install -e ".[label]"')
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from tiny_models import DEMO, SEG2D, brain_slices, demo_pngs, write_classifier, write_segmenter  # noqa: E402

from monai_rd.label import (  # noqa: E402
    IMAGE_PATTERNS,
    TRAIN_STATS_FILE,
    EntropyScoring,
    EntropyStrategy,
    RDClassifyInferTask,
    RDSegmentInferTask,
    RDTrainTask,
    mean_entropy,
    prune_folders,
    score_key,
)

pytestmark = pytest.mark.label


def test_mean_entropy_of_certain_uniform_and_sampled_predictions():
    """Catches an entropy over the wrong axis (samples or space instead of classes), a log of the samples' mean
    skipped (the mean of the entropies instead: no MC-dropout disagreement), or a missing spatial mean."""
    assert mean_entropy(torch.tensor([[1.0, 0.0, 0.0]])) == pytest.approx(0.0, abs=1e-9)
    assert mean_entropy(torch.full((1, 4), 0.25)) == pytest.approx(math.log(4))
    # two confident samples that disagree: their mean is uniform over 2 classes
    assert mean_entropy(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.log(2))
    # a map: half the pixels certain, half uniform over 2 classes
    probs = torch.tensor([[[1.0, 0.5], [0.0, 0.5]]])  # (R=1, C=2, 2 pixels)
    assert mean_entropy(probs) == pytest.approx(math.log(2) / 2)
    assert mean_entropy(torch.tensor([[0.5, 0.5]]), multi_label=True) == pytest.approx(2 * math.log(2))


def _store(studies):
    return LocalDatastore(str(studies), extensions=list(IMAGE_PATTERNS))


def test_entropy_scores_fill_the_image_info_and_the_strategy_serves_the_most_uncertain_first(tmp_path):
    """Catches scores that are not the served model's softmax entropy, scores written to the wrong image, a
    strategy that does not follow the scores (or serves a labelled image), and a path in the strategy's answer."""
    studies, models = tmp_path / "studies", tmp_path / "models"
    ids = demo_pngs(studies, per_class=1)
    write_classifier(models, seed=3)
    store = _store(studies)
    task = RDClassifyInferTask(DEMO, str(models))
    summary = EntropyScoring(task)({"device": "cpu"}, store)
    assert summary["executed"] == len(ids)

    loaded = task.student.load("cpu")
    expected = {}
    for image_id in ids:
        x = loaded["preprocessing"]({"image": store.get_image_uri(image_id)})["image"][None]
        with torch.no_grad():
            p = torch.softmax(loaded["network"](x), dim=1)[0]
        expected[image_id] = float(-(p * p.log()).sum())
    key = score_key("rd_demo")
    got = {i: store.get_image_info(i)[key] for i in ids}
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(v, 6) for v in got.values())) == len(ids)  # distinct: the order below means something
    assert all(store.get_image_info(i)[f"{key}_ts"] == int(os.stat(models / "model.pt").st_mtime) for i in ids)
    assert EntropyScoring(task)({"device": "cpu"}, store)["skipped"] == len(ids)  # same model: nothing recomputed

    strategy = EntropyStrategy("rd_demo")
    order = sorted(ids, key=lambda i: -expected[i])
    served = []
    for _ in range(3):
        pick = strategy({"strategy": "entropy_rd_demo"}, store)
        assert set(pick) == {"id", "score"} and pick["score"] == pytest.approx(expected[pick["id"]], abs=1e-5)
        served.append(pick["id"])
        label = tmp_path / f"{pick['id']}.json"
        label.write_text(json.dumps({"label": "frontal"}))
        store.save_label(pick["id"], str(label), "final", {})
    assert served == order[:3]
    left = [i for i in ids if i not in served]
    assert First()({"strategy": "first"}, store)["id"] == sorted(left)[0]
    assert all(Random()({"strategy": "random"}, store)["id"] in left for _ in range(5))


def test_segmentation_entropy_is_the_mean_voxel_entropy_and_mc_dropout_samples_differ(tmp_path):
    """Catches a segmentation score that is not averaged per voxel over the classes (a uniform 6-class map scores
    log 6), and MC dropout that is ignored (one pass) or left on after scoring."""
    studies, models = tmp_path / "studies", tmp_path / "models"
    ids = list(brain_slices(studies, SEG2D, 2))
    write_segmenter(models, SEG2D, uniform=True)
    store = _store(studies)
    task = RDSegmentInferTask(SEG2D, str(models))
    EntropyScoring(task)({"device": "cpu"}, store)
    for image_id in ids:
        assert store.get_image_info(image_id)[score_key("rd_brain_segment_2d")] == pytest.approx(math.log(6), abs=1e-6)

    write_segmenter(models, SEG2D, seed=1)
    student = task.student
    image = store.get_image_uri(ids[0])
    assert student.probabilities(image, mc_samples=4).shape[0] == 1  # no dropout in the student: one pass
    loaded = student.load("cpu")
    loaded["network"] = torch.nn.Sequential(torch.nn.Dropout(0.5), loaded["network"]).eval()
    samples = student.probabilities(image, mc_samples=4)
    assert samples.shape[:2] == (4, 6) and not torch.allclose(samples[0], samples[1])
    assert not loaded["network"][0].training  # dropout off again for serving


def _labelled(studies, ids, class_name):
    store = _store(studies)
    for image_id in ids:
        store.save_label(image_id, os.path.join(studies, "..", "l.json"), "final", {"label": class_name})
    return store


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_worse_model_is_not_published_unless_forced_and_an_equal_one_is(tmp_path):
    """Catches any finished run replacing the served model (a 0-accuracy model served), the comparison made on
    different images or the wrong direction, force_publish ignored, and the decision missing from train_stats."""
    studies, served = tmp_path / "studies", tmp_path / "served"
    (tmp_path / "l.json").write_text("{}")
    ids = demo_pngs(studies, per_class=2)
    write_classifier(served, favour="frontal")  # predicts frontal for every image
    store = _labelled(studies, ids, "frontal")  # every label agrees with it: the served model scores 1.0
    task = RDTrainTask(DEMO, str(served), {}, keep_runs=2)
    run = tmp_path / "served" / "label_runs" / "20260101T000000000000Z"
    write_classifier(run / "models", favour="temporal")  # the new run's model: always temporal, accuracy 0
    (run / "eval").mkdir(parents=True)
    (run / "eval" / TRAIN_STATS_FILE).write_text(json.dumps({"epoch": 1}))
    task._run_dir = str(run)
    train, val = task._partition_datalist(task._fetch_datalist({}, store), {"seed": 0})
    before = _sha(served / "model.pt")

    decision = task._publish({}, "cpu")
    assert decision["val_metric"] == 0.0 and decision["served_val_metric"] == 1.0 and decision["metric"] == "accuracy"
    assert not decision["published"] and _sha(served / "model.pt") == before
    assert "0.0000 < the served model's 1.0000" in decision["publish_reason"]
    assert json.load(open(run / "eval" / TRAIN_STATS_FILE))["published"] is False
    assert task.stats()["published"] is False and task.stats()["run"] == run.name

    decision = task._publish({"force_publish": "true"}, "cpu")
    assert decision["published"] and decision["publish_reason"] == "force_publish"
    assert _sha(served / "model.pt") == _sha(run / "models" / "model.pt")

    write_classifier(run / "models", favour="frontal", seed=5)  # better than the (forced) served one
    decision = task._publish({}, "cpu")
    assert decision["published"] and (decision["val_metric"], decision["served_val_metric"]) == (1.0, 0.0)
    write_classifier(run / "models", favour="frontal", seed=6)  # as good as the served one: published too
    decision = task._publish({}, "cpu")
    assert decision["published"] and decision["val_metric"] == decision["served_val_metric"] == 1.0
    assert _sha(served / "model.pt") == _sha(run / "models" / "model.pt")
    assert len(val) >= 1 and sorted(i["image"] for i in train + val) == sorted(store.get_image_uri(i) for i in ids)


def test_prune_keeps_the_newest_folders(tmp_path):
    """Catches pruning that keeps the oldest runs, removes other folders, or removes the last one."""
    for name in ("20260101T000000Z", "20260301T000000Z", "20260201T000000Z", "replaced-20260101T000000Z"):
        (tmp_path / name).mkdir()
    assert prune_folders(str(tmp_path), "2026", 2) == ["20260101T000000Z"]
    assert sorted(os.listdir(tmp_path)) == ["20260201T000000Z", "20260301T000000Z", "replaced-20260101T000000Z"]
    assert prune_folders(str(tmp_path), "replaced-", 0) == [] and prune_folders(str(tmp_path / "none"), "", 1) == []
