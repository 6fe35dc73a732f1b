"""A datalist's ``unlabelled`` images reach RD's distillation terms through the bundle, and only where they can.

Real demo patches and the real EfficientNet-Lite0 teacher: 2 labelled training images per class plus 6 unlabelled
training-split images, one epoch at 32 px.
"""

import json
import os

import monai.bundle
import pytest
from demo_subset import write_demo_subset  # tests/bundles, on sys.path under pytest
from ignite.engine import Events

from monai_rd.errors import DataCheckError, find_rd_error
from monai_rd.handlers import LinearLossWeight
from monai_rd.utils.constants import UNLABELLED

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
TRAIN = os.path.join(BUNDLE, "configs", "train.json")
N_UNLABELLED = 6

pytestmark = pytest.mark.slow


def _datalist(tmp, extra=()):
    sub = write_demo_subset(tmp / "datalist.json", {"training": 2, "validation": 1, "test": 1})
    full = json.load(open(os.path.join(BUNDLE, "configs", "datalist.json")))
    used = {it["image"] for it in sub["training"]}
    sub["unlabelled"] = [{"image": it["image"]} for it in full["training"] if it["image"] not in used][:N_UNLABELLED]
    sub["unlabelled"] += [{"image": img} for img in extra]
    (tmp / "datalist.json").write_text(json.dumps(sub))
    return sub


def _train(tmp, datalist, **options):
    """Train one epoch; returns the labels of every training batch and the built feature cache (or None)."""
    workflow = monai.bundle.ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=BUNDLE, datalist_json=str(datalist),
        ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"), epochs=1, batch_size=4, image_size=32,
        num_workers=0, **options,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    labels = []
    # the trainer decollates its batch after each iteration: one dict per image
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: labels.extend(int(item["label"]) for item in e.state.batch))
    workflow.run()
    return labels, workflow.parser.get_parsed_content("method_def").cache  # None for the student alone


def test_rd_trains_on_the_unlabelled_images_and_the_student_alone_does_not(tmp_path):
    """Catches unlabelled images never reaching the trainer or its cache, and the student-alone baseline
    getting extra (label-free, so useless) steps that would make it a different baseline."""
    sub = _datalist(tmp_path)
    labelled = len(sub["training"])
    labels, cache = _train(tmp_path / "rd", tmp_path / "datalist.json")
    # drop_last: every epoch is (10 + 6) // 4 = 4 full batches, so all 16 items were drawn
    assert len(labels) == labelled + N_UNLABELLED and labels.count(UNLABELLED) == N_UNLABELLED
    assert len(cache) == labelled + N_UNLABELLED  # teacher features of the unlabelled images too
    labels, _ = _train(tmp_path / "alone", tmp_path / "datalist.json", method="student")
    assert UNLABELLED not in labels and len(labels) == labelled // 4 * 4
    # as the command line passes it
    labels, _ = _train(tmp_path / "off", tmp_path / "datalist.json", unlabelled="false")
    assert UNLABELLED not in labels


def test_an_unlabelled_image_that_is_a_test_image_stops_the_run_before_training(tmp_path):
    sub = write_demo_subset(tmp_path / "datalist.json", {"test": 1})
    _datalist(tmp_path, extra=[sub["test"][0]["image"]])
    with pytest.raises(Exception) as err:
        _train(tmp_path / "leak", tmp_path / "datalist.json")
    found = find_rd_error(err.value)
    assert isinstance(found, DataCheckError) and "unlabelled[6]" in str(found) and "test" in str(found)
    assert not os.path.exists(tmp_path / "leak" / "models" / "model.pt")


@pytest.mark.parametrize("method, options, expected_end", [
    ("rd", {}, (1.0, 1.0)),                                        # unlabelled images: α, β held at 1
    ("rd", {"unlabelled": "false"}, (0.0, 0.0)),                   # not trained on: decay as before
    ("rd", {"alpha_end": "0.5", "beta_end": "0"}, (0.5, 0.0)),     # set values win, as the CLI gives them
    ("kd", {}, (0.0, 1.0)),                                        # KD: α fixed at 0, its KD weight held
])
def test_the_schedule_holds_alpha_beta_when_unlabelled_images_are_trained_on(tmp_path, method, options, expected_end):
    """Catches the loss weights decaying to 0 (so the unlabelled images stop counting by the end of the run) under
    the default, or the new default overriding a value the user set or a method's fixed alpha."""
    _datalist(tmp_path)
    parser = monai.bundle.ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": BUNDLE, "datalist_json": str(tmp_path / "datalist.json"), "epochs": "1",
                   "batch_size": "4", "method": method, "ckpt_dir": str(tmp_path / "m"),
                   "output_dir": str(tmp_path / "e"), **options})
    method_def = parser.get_parsed_content("method_def")  # the teacher and cache as initialize builds them
    method_def.prepare(parser.get_parsed_content("datalist"), parser.get_parsed_content("base_transforms"),
                       parser.get_parsed_content("train#augmentation"))
    loss = parser.get_parsed_content("loss")
    trainer = parser.get_parsed_content("train#trainer")
    schedules = [h for h, *_ in trainer._event_handlers[Events.ITERATION_STARTED] if isinstance(h, LinearLossWeight)]
    total = trainer.state.epoch_length
    state = type("State", (), {"iteration": total, "epoch": 1})()
    for schedule in schedules:
        schedule(type("Engine", (), {"state": state})())
    assert len(schedules) == 2 and [loss.alpha, loss.beta] == pytest.approx(list(expected_end))
