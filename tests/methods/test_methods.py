"""``--method``: the registry and options, and what each method object builds into the shared recipe (parsed from
the demo bundle, the teacher built as ``initialize`` builds it)."""

import json
import os

import pytest
from monai.bundle import ConfigParser

from monai_rd.bundle import ClassificationOptions, SegmentationOptions
from monai_rd.engines import DistillationTrainer, FeatureKDTrainer, KDTrainer, RDTrainer
from monai_rd.errors import OptionError, find_rd_error
from monai_rd.losses import FitNetsLoss
from monai_rd.methods import METHODS, get_method_spec, list_methods
from monai_rd.networks import AdaptedTeacherClassifier, StudentClassifier
from monai_rd.networks.linear_probe import LinearProbe, TeacherLinearProbe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")


def _options(**kw):
    return ClassificationOptions(class_names=["a", "b"], **kw)


def test_distill_false_is_the_student_alone_and_contradictions_are_refused():
    """Catches --distill false being ignored, or silently overriding an explicit --method."""
    assert get_method_spec("rd", "false").name == "student" and get_method_spec("student", False).name == "student"
    assert get_method_spec("KD ", "true").name == "kd"
    with pytest.raises(OptionError, match="contradicts --method kd"):
        get_method_spec("kd", "false")
    with pytest.raises(OptionError, match="--method must be one of student, rd,"):
        get_method_spec("hinton", True)
    with pytest.raises(OptionError, match="--method kd is not available for segmentation bundles"):
        get_method_spec("kd", True, task="segmentation")
    assert list_methods("segmentation")[:2] == ["student", "rd"]


def test_ablations_fix_their_weight_and_feature_weights_default_to_the_literature():
    """Catches an ablation that lets --gamma/--alpha_start back in, or RepDistiller's weights lost."""
    assert _options(method="rd_no_cka", gamma=0.7).gamma == 0.0 and _options(method="rd", gamma=0.5).gamma == 0.5
    o = _options(method="rd_no_cotrain", alpha_start=0.7, alpha_end=0.3)
    assert (o.alpha_start, o.alpha_end) == (0.0, 0.0)
    assert {m: METHODS[m].feature_weight for m in ("fitnets", "at", "sp", "crd")} == {
        "fitnets": 100.0, "at": 1000.0, "sp": 3000.0, "crd": 0.8}
    assert _options(method="sp").distill_weight == 3000.0
    assert _options(method="sp", distill_weight="null").distill_weight == 3000.0
    assert _options(method="sp", distill_weight="5").distill_weight == 5.0
    with pytest.raises(OptionError, match="distill_weight must be at least 0"):
        _options(method="sp", distill_weight=-1)


def test_adapted_teacher_methods_default_their_learning_rate_and_epochs():
    """Catches finetune run at LoRA's (10x larger) learning rate, or adaptation epochs not defaulting to --epochs."""
    assert _options(method="finetune").teacher_lr == 1e-4
    assert _options(method="lora_kd", teacher_lr="null").teacher_lr == 1e-3
    assert _options(method="lora", teacher_lr="0.01").teacher_lr == 0.01
    with pytest.raises(OptionError, match="teacher_lr must be positive"):
        _options(method="lora", teacher_lr=0)
    assert _options(method="lora", epochs=7).teacher_epochs == 7 and _options(method="rd", epochs=7).teacher_epochs == 0
    assert (METHODS["finetune"].adapt, METHODS["lora"].adapt, METHODS["lora_kd"].adapt) == ("finetune", "lora", "lora")


def test_options_name_the_option_a_value_does_not_fit():
    """Catches a bad value reaching a component (a torch error far from the option) instead of stopping first."""
    for kw, match in [({"epochs": 0}, "--epochs"), ({"lr": "fast"}, "--lr"), ({"amp": "maybe"}, "--amp"),
                      ({"cache_dtype": "int8"}, "--cache_dtype"), ({"window": "wide"}, "window")]:
        with pytest.raises(OptionError, match=match):
            _options(**kw)
    with pytest.raises(OptionError, match="--roi_size"):
        SegmentationOptions(class_names=["bg", "fg"], roi_size=[8, 8])


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    full = json.load(open(os.path.join(BUNDLE, "configs", "datalist.json")))
    sub = {"classes": full["classes"], "seed": full["seed"]}
    for split, k in {"training": 2, "validation": 1, "test": 1}.items():
        sub[split] = [it for c in range(len(full["classes"])) for it in [i for i in full[split] if i["label"] == c][:k]]
    path = tmp_path_factory.mktemp("methods") / "datalist.json"
    path.write_text(json.dumps(sub))
    return str(path)


def _parse(datalist, adapt=False, **options):
    """The demo's train.json with the method prepared as ``initialize`` prepares it (teacher built, probe fitted);
    for the adapted-teacher methods only the teacher and its head are built (no adaptation run)."""
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    parser.update({"bundle_root": BUNDLE, "datalist_json": datalist, "epochs": 2, "batch_size": 5,
                   "device": "$torch.device('cpu')", "cache_teacher": False, "teacher_branch_metrics": False,
                   **options})
    method = parser.get_parsed_content("method_def")
    if method.options.spec.adapt and not adapt:
        method.datalist, method.teacher = parser.get_parsed_content("datalist"), method.make_teacher()
    else:
        method.prepare(parser.get_parsed_content("datalist"), parser.get_parsed_content("base_transforms"),
                       parser.get_parsed_content("train#augmentation"))
    return parser


def _optimised(parser):
    return {id(p) for g in parser.get_parsed_content("optimizer").param_groups for p in g["params"]}


@pytest.mark.parametrize("method, trainer_cls", [("student", DistillationTrainer), ("kd", KDTrainer),
                                                  ("fitnets", FeatureKDTrainer), ("rd_direct", RDTrainer)])
def test_each_method_builds_its_own_trainer_and_parts(datalist, method, trainer_cls):
    """Catches a method wired to the wrong trainer, a part left out of the optimizer or the checkpoint, or a fixed
    teacher head being trained."""
    parser = _parse(datalist, method=method)
    trainer = parser.get_parsed_content("train#trainer")
    held = _optimised(parser)
    student = parser.get_parsed_content("network")
    assert type(trainer) is trainer_cls
    assert isinstance(student, StudentClassifier) and {id(p) for p in student.parameters()} <= held
    parts = parser.get_parsed_content("method_def").checkpoint_parts()
    if method == "student":
        assert trainer.features.teacher is None and parts == {}
    elif method == "kd":  # KD from the probe: no Phi, the probe is frozen and outside the optimizer
        assert isinstance(trainer.teacher_head, LinearProbe) and parts == {}
        assert not {id(p) for p in trainer.teacher_head.parameters()} & held
        assert parser.get_parsed_content("options").alpha_start == 0.0
    elif method == "fitnets":
        assert isinstance(trainer.feature_loss, FitNetsLoss) and trainer.feature_loss_weight == 100.0
        assert {id(p) for p in trainer.feature_loss.parameters()} <= held  # the regressor is trained
        assert list(parts) == ["feature_loss"]
        assert parser.get_parsed_content("method_def").loss_keys[-1] == "feature_kd"
    else:  # Phi and the head frozen from the start: the direct stage trains them first
        assert list(parts) == ["reprogrammer"] and not any(p.requires_grad for p in trainer.reprogrammer.parameters())
        assert parser.get_parsed_content("options").direct_epochs == 2


def test_the_direct_stage_runs_before_the_first_epoch_only(datalist):
    """Catches a resumed run (which starts at epoch 2) repeating direct reprogramming over the fitted Phi."""
    parser = _parse(datalist, method="rd_direct", direct_epochs=1)
    trainer = parser.get_parsed_content("train#trainer")
    method = parser.get_parsed_content("method_def")
    phi = {k: v.clone() for k, v in trainer.reprogrammer.state_dict().items()}
    trainer.state.epoch = 2  # as after resuming from checkpoint_epoch=1.pt
    method._direct_stage(trainer)
    assert all(v.equal(phi[k]) for k, v in trainer.reprogrammer.state_dict().items())
    trainer.state.epoch = 1
    method._direct_stage(trainer)
    assert not all(v.equal(phi[k]) for k, v in trainer.reprogrammer.state_dict().items())


def test_probe_validates_and_tests_the_teacher_with_its_probe(datalist):
    """Catches the probe baseline validating the (untrained) student, or saving the teacher's weights."""
    parser = _parse(datalist, method="probe")
    network = parser.get_parsed_content("network")
    assert isinstance(network, TeacherLinearProbe)
    assert network.teacher is parser.get_parsed_content("method_def").teacher
    assert parser.get_parsed_content("validate#evaluator").network is network
    assert list(network.state_dict()) == ["probe.linear.weight", "probe.linear.bias"]  # model.pt: the probe only


def test_distill_false_with_another_method_stops_before_any_work(datalist):
    """Catches the contradiction being found only after the teacher was built."""
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    parser.update({"bundle_root": BUNDLE, "method": "kd", "distill": "false"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("options")
    assert isinstance(find_rd_error(info.value), OptionError)


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_finetune_and_lora_deploy_the_adapted_teacher_and_save_what_was_adapted(datalist, method):
    """Catches finetune/lora deploying the unadapted teacher's probe (model.pt without the adapted weights)."""
    parser = _parse(datalist, method=method, teacher_epochs=3)
    network = parser.get_parsed_content("network")
    method_def = parser.get_parsed_content("method_def")
    assert isinstance(network, AdaptedTeacherClassifier) and network.mode == method
    assert network.teacher is method_def.teacher and network.probe is method_def.probe
    assert parser.get_parsed_content("validate#evaluator").network is network
    teacher_keys = [k for k in network.state_dict() if k.startswith("teacher.")]
    if method == "finetune":
        assert len(teacher_keys) == len(network.teacher.model.state_dict())
    else:  # the LoRA adapters only: the base weights come from the teacher's own file
        assert teacher_keys and all("lora_" in k for k in teacher_keys)
    assert not method_def.uses_cache  # no student: no teacher features to cache
    fingerprint = parser.get_parsed_content("train#fingerprint")
    lr = 1e-4 if method == "finetune" else 1e-3
    assert fingerprint["teacher_adaptation"][:2] == [3, lr]
    options = parser.get_parsed_content("options")
    assert "teacher_adaptation" not in ClassificationOptions(class_names=options.class_names, method="kd").fingerprint(
        1, "x", {"training": []})


def test_lora_kd_distils_the_lora_adapted_teacher_and_its_head(datalist):
    """Catches lora_kd distilling a teacher without adapters, or training the teacher inside the student's run."""
    parser = _parse(datalist, method="lora_kd", lora_rank=4, lora_targets="['_project_conv']", teacher_epochs=1)
    trainer = parser.get_parsed_content("train#trainer")
    method_def = parser.get_parsed_content("method_def")
    classifier = method_def.classifier
    assert isinstance(parser.get_parsed_content("network"), StudentClassifier) and type(trainer) is KDTrainer
    assert trainer.features.teacher is classifier.teacher is method_def.teacher
    assert trainer.teacher_head is classifier.probe
    assert classifier.mode == "lora" and len(classifier.adapted_layers) == 16  # every MBConv block's projection
    assert all(layer.endswith("_project_conv") for layer in classifier.adapted_layers)
    assert not {id(p) for p in classifier.parameters()} & _optimised(parser)
    assert parser.get_parsed_content("train#fingerprint")["teacher_adaptation"] == [1, 1e-3, 4, 16.0, ["_project_conv"]]


@pytest.mark.parametrize("name, losses", [("rd", ("RDLoss", "DenseRDLoss")), ("drd", ("DRDLoss", "DenseDRDLoss"))])
def test_rd_and_drd_build_their_task_loss_and_detach_follows_the_option(name, losses):
    """Catches a method built with the other family's loss (DRD training on RDLoss: no hybrid terms), the
    classification loss used for segmentation, or --detach_teacher not reaching the KL (DRD names it detach_hybrid)."""
    for opts, loss_name in ((ClassificationOptions(class_names=["a", "b"], method=name), losses[0]),
                            (SegmentationOptions(class_names=["bg", "a"], method=name), losses[1])):
        for detach in (True, False):
            opts.detach_teacher = detach
            loss = opts.spec.impl[opts.task](opts).loss
            assert type(loss).__name__ == loss_name
            assert loss.kd.detach_teacher is detach
