"""The trained model's own size, channels and classes: written at training, enforced at use."""

import json
import os

import pytest
import torch
from monai.bundle import ConfigParser

from monai_rd import __version__
from monai_rd.bundle import as_class_names, model_spec, read_model_spec, segmentation_model_spec, write_model_spec
from monai_rd.errors import CheckpointMismatchError, OptionError, find_rd_error

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
    assert read_model_spec(
        str(trained), "bundles/rd_x", image_size="32", class_names=["a", "b", "c"]
    )["in_channels"] == 3


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


def _option(parser, name):
    """The value a recipe runs with: inference.json's ``opt#<name>``, a training recipe's ``options.<name>``."""
    if "opt" in parser:
        return parser.get_parsed_content(f"opt#{name}")
    return getattr(parser.get_parsed_content("options"), name)


def _refusal(parser, name):
    """The user-fixable error that reading option ``name`` raises (MONAI wraps it)."""
    with pytest.raises(RuntimeError) as raised:
        _option(parser, name)
    return find_rd_error(raised.value)


def test_the_3d_bundle_writes_spatial_dims_and_its_evaluate_inference_export_take_it_from_the_model(tmp_path):
    """Catches the recipe not passing spatial_dims to the spec (a 3D model recorded as 2D), or evaluation,
    inference and export (ckpt_export builds inference.json's network_def) not taking it from the model."""
    configs = os.path.join(REPO, "bundles", "rd_brain3d_classify", "configs")
    train, evaluate, infer = (os.path.join(configs, f) for f in ("train.json", "evaluate.json", "inference.json"))
    write_model_spec(_parser(train).get_parsed_content("model_spec"), str(tmp_path))
    (tmp_path / "model.pt").touch()  # read only by the networks' loaders, which these checks do not run
    meta = json.loads((tmp_path / "model_meta.json").read_text())
    assert meta["spatial_dims"] == 3 and meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16] * 3
    # inference.json sets no spatial_dims of its own: 3 can only come from the model
    assert _parser(infer).get()["spatial_dims"] is None
    inference = _parser(infer, ckpt_dir=str(tmp_path))
    assert _option(inference, "spatial_dims") == 3
    assert inference.get_parsed_content("network_def").backbone.conv1.weight.ndim == 5  # a 3D convolution
    assert _option(_parser(train, evaluate, ckpt_dir=str(tmp_path)), "spatial_dims") == 3
    for files in ((infer,), (train, evaluate)):
        parser = _parser(*files, ckpt_dir=str(tmp_path), spatial_dims="2")  # `--spatial_dims 2` on the command line
        err = _refusal(parser, "spatial_dims")  # MONAI wraps an expression's error; the cause is ours
        assert isinstance(err, OptionError) and "--spatial_dims '2' contradicts the trained model's 3" in str(err)


SEG_FIELDS = dict(class_names=["background", "a", "b"], spatial_dims=3, in_channels=1, roi_size=[16, 16, 8],
                  intensity_range=[-1000.0, 200.0], axcodes="RAS", pixdim=[1.5, 1.5, 2.0], student="unet",
                  student_channels=[8, 16], student_strides=[2], student_res_units=1)


def test_a_segmentation_spec_records_the_window_grid_and_unet_and_refuses_contradictions(tmp_path):
    """Catches a segmentation spec that drops the voxel size or window (inference would resample differently from
    training, silently), typed values compared as text, or a classifier's spec read as a segmentation model's."""
    spec = segmentation_model_spec("bundles/rd_x", **{**SEG_FIELDS, "roi_size": "[16,16,8]", "pixdim": "[1.5,1.5,2]"})
    assert spec["task"] == "segmentation" and spec["roi_size"] == [16, 16, 8] and spec["pixdim"] == [1.5, 1.5, 2.0]
    fmt = spec["network_data_format"]
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "a", "2": "b"}
    assert fmt["inputs"]["image"]["spatial_shape"] == [16, 16, 8]
    write_model_spec(spec, str(tmp_path))
    # the same values as a shell types them pass; None means "not given"
    same = dict(roi_size="[16,16,8]", pixdim="[1.5,1.5,2.0]", intensity_range="[-1000,200]", spatial_dims="3",
                student_channels="[8,16]", axcodes=None)
    assert read_model_spec(str(tmp_path), "bundles/rd_x", task="segmentation", **same)["axcodes"] == "RAS"
    # the sliding window is an inference choice: a given one is used
    assert read_model_spec(
        str(tmp_path), "bundles/rd_x", task="segmentation", roi_size="[32,32,16]"
    )["roi_size"] == [32, 32, 16]
    for option, value in (("pixdim", "[1,1,1]"), ("axcodes", "LPS"),
                          ("student_channels", [16, 32]), ("intensity_range", [0, 255])):
        with pytest.raises(OptionError, match=f"--{option} .* contradicts the trained model's"):
            read_model_spec(str(tmp_path), "bundles/rd_x", task="segmentation", **{option: value})
    with pytest.raises(CheckpointMismatchError, match="is a segmentation model"):
        read_model_spec(str(tmp_path), "bundles/rd_x")
    with pytest.raises(OptionError, match="--pixdim must have 3 values"):
        segmentation_model_spec("bundles/rd_x", **{**SEG_FIELDS, "pixdim": [1.0, 1.0]})


@pytest.mark.parametrize("bundle", ["rd_brain_segment", "rd_brain_segment_2d", "rd_spleen_ct"])
def test_segmentation_bundles_evaluate_and_infer_with_the_models_own_grid_and_unet(bundle, tmp_path):
    """Catches training with `--pixdim`/`--roi_size` overrides and inference or evaluation quietly using the
    bundle's defaults instead (another voxel size, another window), and an override that contradicts the model."""
    configs = os.path.join(REPO, "bundles", bundle, "configs")
    train, evaluate, infer = (os.path.join(configs, f) for f in ("train.json", "evaluate.json", "inference.json"))
    dims = _option(_parser(train), "spatial_dims")
    narrower = [c // 2 for c in _option(_parser(train), "student_channels")]
    trained = dict(roi_size=str([24] * dims), pixdim=str([2.0] * dims), student_channels=str(narrower))
    write_model_spec(_parser(train, **trained).get_parsed_content("model_spec"), str(tmp_path))
    (tmp_path / "model.pt").touch()
    for files in ((infer,), (train, evaluate)):
        parser = _parser(*files, ckpt_dir=str(tmp_path))
        assert _option(parser, "roi_size") == [24] * dims
        assert _option(parser, "pixdim") == [2.0] * dims
        net = parser.get_parsed_content("network_def")
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        assert next(m for m in net.modules() if isinstance(m, conv)).out_channels == narrower[0]
        wrong = _parser(*files, ckpt_dir=str(tmp_path), pixdim=str([1.0] * dims))  # `--pixdim [1,1,1]` typed
        err = _refusal(wrong, "pixdim")
        assert isinstance(err, OptionError) and "--pixdim" in str(err)
