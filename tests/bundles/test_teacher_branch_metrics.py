"""The recipe's teacher-branch diagnosis (--teacher_branch_metrics): h(Phi(T(x))) scored on the validation split
each epoch, recorded beside the student's metrics, without changing the student's training."""

import json
import os

import monai.bundle
import pytest
import torch
from demo_subset import write_demo_subset  # tests/bundles, on sys.path under pytest
from ignite.engine import Events
from monai.handlers import from_engine
from monai.metrics import compute_roc_auc
from monai.transforms import Compose

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
TRAIN = os.path.join(BUNDLE, "configs", "train.json")


def _train(tmp, name, **options):
    workflow = monai.bundle.ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=BUNDLE, datalist_json=str(tmp / "datalist.json"),
        ckpt_dir=str(tmp / name / "models"), output_dir=str(tmp / name / "eval"), epochs=2, batch_size=5, **options
    )
    workflow.initialize()
    losses = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    loss = from_engine(["loss"], first=True)  # the output is decollated per image; the loss is the batch's
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(loss(e.state.output))))
    workflow.run()
    metrics = json.load(open(tmp / name / "eval" / "val_metrics.json"))
    return workflow, losses, metrics


def _part(workflow, name):
    method_def = workflow.parser.get_parsed_content("method_def")
    return method_def.network if name == "network" else method_def.checkpoint_parts()[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs of RD on 4 training and 3 validation patches per class, with and without the diagnosis."""
    tmp = tmp_path_factory.mktemp("teacher_branch")
    write_demo_subset(tmp / "datalist.json", {"training": 4, "validation": 3, "test": 1})
    return {on: _train(tmp, f"on={on}", teacher_branch_metrics=on) for on in (True, False)}


@pytest.mark.slow
def test_enabling_it_does_not_change_the_students_training(runs):
    """Catches the extra evaluator drawing from the training's random streams (a DataLoader seeds itself from the
    global torch generator, and MONAI's resets it) or training Phi/h: the batches, losses or weights would differ."""
    (wf_on, losses_on, _), (wf_off, losses_off, _) = runs[True], runs[False]
    assert len(losses_on) == 8 and losses_on == losses_off
    for part in ("network", "reprogrammer"):
        on = _part(wf_on, part).state_dict()
        off = _part(wf_off, part).state_dict()
        assert all(torch.equal(on[k], off[k]) for k in on), part


@pytest.mark.slow
def test_every_epoch_records_the_teacher_branch_beside_the_student(runs):
    """Catches a diagnosis that is missing, written for some epochs only, not a fraction, or on when disabled."""
    history = runs[True][2]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert 0.0 <= h["teacher_branch_accuracy"] <= 1.0 and 0.0 <= h["teacher_branch_auc"] <= 1.0
        assert 0.0 <= h["accuracy"] <= 1.0
    assert not any(k.startswith("teacher_branch") for h in runs[False][2]["history"] for k in h)


@pytest.mark.slow
def test_the_metric_is_computed_from_the_teacher_branch(runs):
    """With the student's backbone zeroed the student predicts one constant (accuracy 1/5, AUC 0.5 on the balanced
    split) while the teacher branch, which does not use the backbone, keeps the values computed here by hand from
    h(Phi(T(x))): catches a metric computed on the student, on a copy of Phi/h, or on other images."""
    workflow = runs[True][0]
    get = workflow.parser.get_parsed_content
    method_def = get("method_def")
    network, phi, teacher = get("network"), method_def.reprogrammer, method_def.teacher
    with torch.no_grad():
        for p in network.backbone.parameters():
            p.zero_()
    validator = get("validate#evaluator")
    validator.run(3)
    recorded = validator.state.metrics
    assert recorded["accuracy"] == pytest.approx(0.2) and recorded["auc"] == pytest.approx(0.5)

    items = get("datalist")["validation"]
    load = Compose(get("base_transforms"))
    images = torch.stack([torch.as_tensor(load(dict(it))["image"]) for it in items])
    labels = torch.tensor([it["label"] for it in items])
    with torch.no_grad():
        feats = teacher.eval()(images).half().float()  # the validation cache stores float16 features
        probs = torch.softmax(network.head(phi.eval()(feats)), 1)
    accuracy = float((probs.argmax(1) == labels).float().mean())
    auc = compute_roc_auc(probs, torch.nn.functional.one_hot(labels, 5), average="macro")
    assert recorded["teacher_branch_accuracy"] == pytest.approx(accuracy)
    assert recorded["teacher_branch_auc"] == pytest.approx(auc, abs=1e-6) and abs(auc - 0.5) > 1e-3
    final = json.load(open(get("output_dir") + "/val_metrics.json"))["history"][-1]
    assert final["epoch"] == 3 and final["teacher_branch_auc"] == pytest.approx(auc, abs=1e-6)
