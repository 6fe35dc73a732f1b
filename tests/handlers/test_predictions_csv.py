"""predictions.csv names its columns and the predicted class."""

import csv

import pytest
import torch

from monai_rd.handlers import PredictionsCSVSaver


def test_header_probabilities_and_predicted_label(tmp_path):
    saver = PredictionsCSVSaver(["benign", "malignant", "normal"], output_dir=str(tmp_path))
    saver.save_batch(torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]), {"filename_or_obj": ["a.png", "b.png"]})
    saver.finalize()
    rows = list(csv.reader(open(tmp_path / "predictions.csv")))
    assert rows[0] == ["image", "benign", "malignant", "normal", "predicted"]
    assert rows[1][0] == "a.png" and rows[1][-1] == "malignant" and rows[2][-1] == "benign"
    assert [float(v) for v in rows[1][1:4]] == pytest.approx([0.1, 0.7, 0.2])


def test_multi_label_threshold_and_wrong_width(tmp_path):
    saver = PredictionsCSVSaver(["a", "b", "c"], multi_label=True, output_dir=str(tmp_path))
    saver.save_batch(torch.tensor([[0.9, 0.2, 0.5]]), {"filename_or_obj": ["x.png"]})
    saver.finalize()
    assert list(csv.reader(open(tmp_path / "predictions.csv")))[1][-1] == "a;c"
    saver.save_batch(torch.tensor([[0.9, 0.1]]), {"filename_or_obj": ["y.png"]})
    with pytest.raises(ValueError, match="y.png has 2 values but 3 class names"):
        saver.finalize()


def test_an_input_that_was_not_predicted_gets_no_row_and_never_a_class(tmp_path):
    """Catches a skipped input (its placeholder's finite scores) or NaN probabilities written as a class (argmax of
    NaN is the first class: `nan.tif,nan,...,cerebellum`)."""
    statuses = {"a.png": "", "b.png": "not read: OSError: image file is truncated", "c.png": ""}
    saver = PredictionsCSVSaver(["x", "y"], output_dir=str(tmp_path), statuses=statuses)
    probs = torch.tensor([[0.2, 0.8], [0.5, 0.5], [float("nan"), float("nan")]])
    saver.save_batch(probs, {"filename_or_obj": ["a.png", "b.png", "c.png"]})
    saver.finalize()
    rows = list(csv.reader(open(tmp_path / "predictions.csv")))
    assert rows == [["image", "x", "y", "predicted"], ["a.png", "0.2", "0.8", "y"]]
