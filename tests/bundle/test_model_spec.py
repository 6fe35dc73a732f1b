"""The trained model's own size, channels and classes: written at training, enforced at use."""

import json

import pytest

from monai_rd import __version__
from monai_rd.bundle import as_class_names, model_spec, read_model_spec, write_model_spec
from monai_rd.errors import CheckpointMismatchError, OptionError


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
