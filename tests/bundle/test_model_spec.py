"""The trained model's own size, channels and classes: written at training, enforced at use."""

import json
import os

import pytest

from monai.bundle import ConfigParser
from monai_rd import __version__
from monai_rd.bundle import as_class_names, model_spec, read_model_spec, write_model_spec
from monai_rd.errors import CheckpointMismatchError, OptionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def trained(tmp_path):
    spec = model_spec(["a", "b", "c"], image_size=32, in_channels=3, multi_label=False, student="resnet18",
                      bundle_root="bundles/rd_x")
    write_model_spec(spec, str(tmp_path))
    return tmp_path


def test_spec_records_what_the_model_needs(trained):
    spec = json.loads((trained / "model_meta.json").read_text())
    assert spec["image_size"] == 32 and spec["in_channels"] == 3 and spec["class_names"] == ["a", "b", "c"]
    assert spec["bundle"] == "rd_x" and spec["monai_rd_version"] == __version__
    fmt = spec["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [32, 32] and fmt["inputs"]["image"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "a", "1": "b", "2": "c"}


def test_no_option_takes_the_models_values_and_agreeing_ones_pass(trained):
    spec = read_model_spec(str(trained), "/elsewhere/bundles/rd_x")
    assert spec["image_size"] == 32
    assert read_model_spec(str(trained), "bundles/rd_x", image_size="32", class_names=["a", "b", "c"])["in_channels"] == 3


@pytest.mark.parametrize("option,value", [("image_size", 224), ("class_names", ["a", "c", "b"]), ("in_channels", 1),
                                          ("student", "mobilenetv2"), ("multi_label", True)])
def test_a_contradicting_option_is_refused_naming_both_values(trained, option, value):
    with pytest.raises(OptionError, match=f"--{option} .* contradicts the trained model's"):
        read_model_spec(str(trained), "bundles/rd_x", **{option: value})


def test_another_bundle_or_version_or_no_spec_is_refused(trained, tmp_path_factory):
    with pytest.raises(CheckpointMismatchError, match="trained by bundle 'rd_x', not 'rd_busi'"):
        read_model_spec(str(trained), "bundles/rd_busi")
    spec = json.loads((trained / "model_meta.json").read_text())
    (trained / "model_meta.json").write_text(json.dumps({**spec, "monai_rd_version": "9.9.0"}))
    with pytest.raises(CheckpointMismatchError, match="monai_rd 9.9.0"):
        read_model_spec(str(trained), "bundles/rd_x")
    with pytest.raises(FileNotFoundError, match="model_meta.json is missing"):
        read_model_spec(str(tmp_path_factory.mktemp("empty")), "bundles/rd_x")


def test_class_names_option():
    assert as_class_names(("x", "y")) == ["x", "y"]
    for bad in ("xy", ["x"], ["x", "x"], None):
        with pytest.raises(OptionError, match="--class_names"):
            as_class_names(bad)


def test_a_3d_model_records_its_spatial_dims_and_a_contradicting_option_is_refused(tmp_path):
    spec = model_spec(["a", "b"], image_size=16, in_channels=1, multi_label=False, student="monai:resnet10",
                      bundle_root="bundles/rd_x", spatial_dims=3)
    assert spec["spatial_dims"] == 3 and spec["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16, 16, 16]
    write_model_spec(spec, str(tmp_path))
    assert read_model_spec(str(tmp_path), "bundles/rd_x", spatial_dims="3")["spatial_dims"] == 3  # as typed: a string
    with pytest.raises(OptionError, match=r"--spatial_dims '2' contradicts the trained model's 3"):
        read_model_spec(str(tmp_path), "bundles/rd_x", spatial_dims="2")
    with pytest.raises(OptionError, match="--spatial_dims must be 2 .* or 3"):
        model_spec(["a", "b"], 16, 1, False, "monai:resnet10", "bundles/rd_x", spatial_dims=4)


def _parser(*files, **overrides):
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(overrides)
    return parser


def test_the_3d_bundle_writes_spatial_dims_and_its_evaluate_inference_export_take_it_from_the_model(tmp_path):
    """Catches the recipe not passing spatial_dims to the spec (a 3D model recorded as 2D), or evaluation,
    inference and export (ckpt_export builds inference.json's network_def) not taking it from the model."""
    configs = os.path.join(REPO, "bundles", "rd_brain3d_classify", "configs")
    train, evaluate, infer = (os.path.join(configs, f) for f in ("train.json", "evaluate.json", "inference.json"))
    write_model_spec(_parser(train).get_parsed_content("model_spec"), str(tmp_path))
    meta = json.loads((tmp_path / "model_meta.json").read_text())
    assert meta["spatial_dims"] == 3 and meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16] * 3
    # inference.json sets no spatial_dims of its own: 3 can only come from the model
    assert _parser(infer).get()["spatial_dims"] is None
    inference = _parser(infer, ckpt_dir=str(tmp_path))
    assert inference.get_parsed_content("opt#spatial_dims") == 3
    assert inference.get_parsed_content("network_def").backbone.conv1.weight.ndim == 5  # a 3D convolution
    assert _parser(train, evaluate, ckpt_dir=str(tmp_path)).get_parsed_content("opt#spatial_dims") == 3
    for files in ((infer,), (train, evaluate)):
        parser = _parser(*files, ckpt_dir=str(tmp_path), spatial_dims="2")  # `--spatial_dims 2` on the command line
        with pytest.raises(RuntimeError) as raised:  # MONAI wraps an expression's error; the cause is ours
            parser.get_parsed_content("opt#spatial_dims")
        assert isinstance(raised.value.__cause__, OptionError)
        assert "--spatial_dims '2' contradicts the trained model's 3" in str(raised.value.__cause__)
