"""Each inference input read on its own (ReadInputd, MarkNonFinited, SkipFailedd) and the run's report."""

import csv
import logging

import pytest
import torch
from ignite.engine import Engine
from monai.transforms import Compose, Lambdad

from monai_rd.errors import SkippedInputsError
from monai_rd.handlers import InferenceReport
from monai_rd.transforms.input_status import MarkNonFinited, ReadInputd, SkipFailedd


def _load(d):
    if d["image"] == "bad.png":
        raise OSError("image file is truncated")
    return {**d, "image": torch.full((1, 4, 4), float("nan") if d["image"] == "nan.png" else 1.0)}


def test_read_input_keeps_a_bad_input_with_its_reason_and_a_placeholder_of_the_input_shape():
    """Catches one bad input raising out of the dataset (the whole run stops), a NaN image passed to the model, and
    a placeholder of another shape than the batch's (the batch cannot be stacked)."""
    read = ReadInputd("image", Compose([Lambdad("image", lambda x: x), _load]), placeholder_shape=(1, 4, 4))
    good, bad, nan = (read({"image": name}) for name in ("a.png", "bad.png", "nan.png"))
    assert good["status"] == "" and good["image_path"] == "a.png" and float(good["image"].sum()) == 16
    assert bad["status"] == "not read: OSError: image file is truncated" and bad["image_path"] == "bad.png"
    assert nan["status"].startswith("not predicted: the image has NaN")
    for item in (bad, nan):
        assert item["image"].shape == (1, 4, 4) and float(item["image"].abs().sum()) == 0


def test_non_finite_outputs_are_marked_and_skipped_inputs_pass_the_postprocessing_untouched():
    """Catches NaN logits going on to argmax (a label map or a class for an input the model could not score)."""
    mark = MarkNonFinited("pred")
    assert mark({"pred": torch.tensor([1.0, float("inf")]), "status": ""})["status"].startswith("not predicted")
    assert mark({"pred": torch.tensor([1.0, 2.0]), "status": ""})["status"] == ""
    assert mark({"pred": torch.tensor([float("nan")]), "status": "not read: x"})["status"] == "not read: x"
    calls = []
    skip = SkipFailedd(lambda d: calls.append(d["image_path"]) or d)
    skip({"status": "not read: x", "image_path": "bad"})
    skip({"status": "", "image_path": "good"})
    assert calls == ["good"]


def test_the_report_summarises_writes_skipped_csv_and_fails_the_run_unless_allowed(tmp_path, caplog):
    """Catches a run that skipped inputs ending with exit status 0, a stale skipped.csv of an earlier run kept."""
    batches = [[{"image_path": "a.png", "status": ""}, {"image_path": "b.png", "status": "not read: OSError: x"}],
               [{"image_path": "c.png", "status": ""}]]
    engine = Engine(lambda e, batch: None)
    report = InferenceReport("predictions.csv", skipped_csv=str(tmp_path / "skipped.csv"))
    report.attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run(batches, max_epochs=1)
    assert report.statuses == {"a.png": "", "b.png": "not read: OSError: x", "c.png": ""}
    assert list(csv.reader(open(tmp_path / "skipped.csv"))) == [["image", "status"], ["b.png", "not read: OSError: x"]]
    assert "2 of 3 input(s) predicted (predictions.csv); 1 skipped" in caplog.text
    with pytest.raises(SkippedInputsError, match=r"b.png: not read: OSError: x.*--allow_skipped true"):
        report.finish()
    InferenceReport("p.csv", allow_skipped="true").finish()  # nothing collected
    allowed = InferenceReport("p.csv", skipped_csv=str(tmp_path / "skipped.csv"), allow_skipped=True)
    allowed.attach(engine)
    engine.run([[{"image_path": "a.png", "status": ""}]], max_epochs=1)
    allowed.finish()
    assert not (tmp_path / "skipped.csv").exists()  # the earlier run's list is not left to describe this one
