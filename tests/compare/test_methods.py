"""``--method``: the option, and what each method wires into the shared recipe (parsed from the demo bundle)."""

import json
import os

import pytest

from monai.bundle import ConfigParser

from monai_rd.compare import METHODS, as_method, create_feature_loss, distill_weight, method_spec, teacher_lr
from monai_rd.errors import OptionError, find_rd_error
from monai_rd.losses import ContrastiveRepresentationLoss, FitNetsLoss
from monai_rd.networks import AdaptedTeacherClassifier, StudentClassifier
from monai_rd.networks.linear_probe import LinearProbe, TeacherLinearProbe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")


def test_distill_false_is_the_student_alone_and_contradictions_are_refused():
    assert as_method("rd", "false") == "student" and as_method("student", False) == "student"
    assert as_method("KD ", "true") == "kd"
    with pytest.raises(OptionError, match="contradicts --method kd"):
        as_method("kd", "false")
    with pytest.raises(OptionError, match="--method must be one of student, rd,"):
        as_method("hinton", True)


def test_ablations_fix_their_weight_and_feature_weights_default_to_the_literature():
    assert method_spec("rd_no_cka").option("gamma", 1.0) == 0.0 and method_spec("rd").option("gamma", 0.5) == 0.5
    assert method_spec("rd_no_cotrain").option("alpha", 1.0) == 0.0
    assert {m: METHODS[m].feature_weight for m in ("fitnets", "at", "sp", "crd")} == {
        "fitnets": 100.0, "at": 1000.0, "sp": 3000.0, "crd": 0.8}
    assert distill_weight(METHODS["sp"], None) == 3000.0 and distill_weight(METHODS["sp"], "null") == 3000.0
    assert distill_weight(METHODS["sp"], "5") == 5.0
    with pytest.raises(OptionError, match="distill_weight must be at least 0"):
        distill_weight(METHODS["sp"], -1)
    assert create_feature_loss(METHODS["rd"], 512, 1280) is None
    assert isinstance(create_feature_loss(METHODS["crd"], 512, 1280), ContrastiveRepresentationLoss)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    full = json.load(open(os.path.join(BUNDLE, "configs", "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 2, "validation": 1, "test": 1}.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    path = tmp_path_factory.mktemp("methods") / "datalist.json"
    path.write_text(json.dumps(sub))
    return str(path)


def _parse(datalist, **options):
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    # without the feature cache: it is built in `initialize`, which parsing does not run
    parser.update({"bundle_root": BUNDLE, "datalist_json": datalist, "epochs": 2, "batch_size": 5,
                   "device": "$torch.device('cpu')", "cache_teacher": False, **options})
    return parser


def _optimised(parser):
    return {id(p) for g in parser.get_parsed_content("optimizer").param_groups for p in g["params"]}


@pytest.mark.parametrize("method", ["student", "kd", "fitnets", "rd_direct"])
def test_each_method_wires_its_own_pieces_into_the_trainer(datalist, method):
    parser = _parse(datalist, method=method)
    trainer = parser.get_parsed_content("train#trainer")
    held = _optimised(parser)
    student = parser.get_parsed_content("network")
    assert isinstance(student, StudentClassifier) and {id(p) for p in student.parameters()} <= held
    if method == "student":
        assert trainer.teacher is None and trainer.reprogrammer is None and trainer.feature_loss is None
    elif method == "kd":  # KD from the probe: no Phi, the probe is frozen and outside the optimizer
        assert isinstance(trainer.teacher_head, LinearProbe) and trainer.reprogrammer is None
        assert not {id(p) for p in trainer.teacher_head.parameters()} & held
        assert parser.get_parsed_content("opt#alpha_start") == 0.0
    elif method == "fitnets":
        assert isinstance(trainer.feature_loss, FitNetsLoss) and trainer.feature_loss_weight == 100.0
        assert {id(p) for p in trainer.feature_loss.parameters()} <= held  # the regressor is trained
        assert trainer.reprogrammer is None and "feature_loss" in parser.get_parsed_content("train#checkpoint_dict")
        assert parser.get_parsed_content("train#loss_keys")[-1] == "feature_kd"
    else:
        assert trainer.direct_epochs == 2 and trainer.reprogrammer is not None  # Phi first, for as many epochs


def test_ablations_set_their_loss_weights_whatever_the_options_say(datalist):
    assert _parse(datalist, method="rd_no_cka", gamma=0.7).get_parsed_content("loss").gamma == 0.0
    assert _parse(datalist, method="rd", gamma=0.7).get_parsed_content("loss").gamma == 0.7
    parser = _parse(datalist, method="rd_no_cotrain")
    assert parser.get_parsed_content("loss").alpha == 0.0 and parser.get_parsed_content("opt#alpha_start") == 0.0
    trainer = _parse(datalist, method="sp", distill_weight="20").get_parsed_content("train#trainer")
    assert trainer.feature_loss_weight == 20.0


def test_probe_validates_and_tests_the_teacher_with_its_probe(datalist):
    parser = _parse(datalist, method="probe")
    network = parser.get_parsed_content("network")
    assert isinstance(network, TeacherLinearProbe)
    assert network.teacher is parser.get_parsed_content("teacher")
    assert parser.get_parsed_content("validate#evaluator").network is network
    assert list(network.state_dict()) == ["probe.linear.weight", "probe.linear.bias"]  # model.pt: the probe only


def test_distill_false_with_another_method_stops_before_any_work(datalist):
    with pytest.raises(Exception) as info:
        _parse(datalist, method="kd", distill="false").get_parsed_content("opt")
    assert isinstance(find_rd_error(info.value), OptionError)


def test_adapted_teacher_methods_document_themselves_and_default_their_learning_rate():
    """Catches a baseline missing from --help, or finetune run at LoRA's (10x larger) learning rate."""
    from monai_rd.compare.cli import _parser

    epilog = _parser().epilog
    assert all(f"  {m:14s} {METHODS[m].summary}" in epilog for m in ("finetune", "lora", "lora_kd"))
    assert (METHODS["finetune"].adapt, METHODS["lora"].adapt, METHODS["lora_kd"].adapt) == ("finetune", "lora", "lora")
    assert METHODS["finetune"].deploys_teacher and METHODS["lora"].deploys_teacher and METHODS["lora_kd"].kd_from_probe
    assert teacher_lr(METHODS["finetune"], None) == 1e-4 and teacher_lr(METHODS["lora_kd"], "null") == 1e-3
    assert teacher_lr(METHODS["lora"], "0.01") == 0.01
    with pytest.raises(OptionError, match="teacher_lr must be positive"):
        teacher_lr(METHODS["lora"], 0)


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_finetune_and_lora_validate_and_test_the_adapted_teacher_and_save_what_was_adapted(datalist, method):
    """Catches finetune/lora deploying the unadapted teacher's probe (model.pt without the adapted weights)."""
    parser = _parse(datalist, method=method, teacher_epochs=3)
    network = parser.get_parsed_content("network")
    assert isinstance(network, AdaptedTeacherClassifier) and network.mode == method
    assert network.teacher is parser.get_parsed_content("teacher")
    assert network.probe is parser.get_parsed_content("teacher_probe")
    assert parser.get_parsed_content("validate#evaluator").network is network
    teacher_keys = [k for k in network.state_dict() if k.startswith("teacher.")]
    if method == "finetune":
        assert len(teacher_keys) == len(network.teacher.model.state_dict())
    else:  # the LoRA adapters only: the base weights come from the teacher's own file
        assert teacher_keys and all("lora_" in k for k in teacher_keys)
    lr = 1e-4 if method == "finetune" else 1e-3
    assert parser.get_parsed_content("opt#teacher_epochs") == 3 and parser.get_parsed_content("opt#teacher_lr") == lr
    assert not parser.get_parsed_content("train#use_cache")  # no student: no teacher features to cache
    fingerprint = parser.get_parsed_content("train#fingerprint")
    assert fingerprint["teacher_adaptation"][:2] == [3, lr]
    other = _parse(datalist, method=method, teacher_epochs=4).get_parsed_content("train#fingerprint")
    assert other["teacher_adaptation"] != fingerprint["teacher_adaptation"]  # a resume with other settings is refused
    assert "teacher_adaptation" not in _parse(datalist, method="kd").get_parsed_content("train#fingerprint")


def test_lora_kd_distils_the_lora_adapted_teacher_and_its_head(datalist):
    """Catches lora_kd distilling a teacher without adapters, or training the teacher inside the student's run."""
    parser = _parse(datalist, method="lora_kd", lora_rank=4, lora_targets="['_project_conv']")
    trainer = parser.get_parsed_content("train#trainer")
    classifier = parser.get_parsed_content("teacher_classifier")
    assert isinstance(parser.get_parsed_content("network"), StudentClassifier)
    assert trainer.teacher is classifier.teacher is parser.get_parsed_content("teacher")
    assert trainer.teacher_head is classifier.probe and trainer.reprogrammer is None
    assert classifier.mode == "lora" and len(classifier.adapted_layers) == 16  # every MBConv block's projection
    assert all(layer.endswith("_project_conv") for layer in classifier.adapted_layers)
    assert not {id(p) for p in classifier.parameters()} & _optimised(parser)
    assert parser.get_parsed_content("opt#alpha_start") == 0.0
    assert parser.get_parsed_content("train#fingerprint")["teacher_adaptation"] == [2, 1e-3, 4, 16.0, ["_project_conv"]]
