"""monai_rd.export: the demo bundle's student to ONNX / torch.export / TorchScript, checked on the demo's real PNGs."""

import os
import shutil

import pytest
import torch
from monai.bundle import ConfigParser

from monai_rd.bundle import write_model_spec
from monai_rd.errors import CheckpointMismatchError, OptionError
from monai_rd.export import bundle_network, export_model, load_exported, main, preprocess_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "rd_demo")
IMAGES = os.path.join(BUNDLE, "data", "frontal")  # real MRI patches, 64x64 PNG


def _trained(folder, **options):
    """A models folder as training writes it: model.pt (the student's state dict; random weights, which the export
    must not care about) and model_meta.json (the spec evaluation, inference and export read)."""
    train = ConfigParser()
    train.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    train.update({"ckpt_dir": str(folder), **options})
    write_model_spec(train.get_parsed_content("model_spec"), str(folder))
    torch.manual_seed(0)
    torch.save(train.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    return str(folder / "model.pt")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("fmt", ["onnx", "torch_export", "torchscript"])
def test_export_matches_the_eager_model_on_real_images(ckpt, tmp_path, fmt):
    out = tmp_path / f"student.{fmt}"
    report = export_model(BUNDLE, str(out), fmt, ckpt=ckpt, images=IMAGES, max_images=4)
    assert out.is_file() and report["format"] == fmt and len(report["images"]) == 4
    assert report["batch_max_abs_diff"] <= 1e-4 and report["single_max_abs_diff"] <= 1e-4
    # checked independently here, on other images and batch sizes than the export used
    net, parser = bundle_network(BUNDLE, ckpt)
    x, paths = preprocess_images(parser, os.path.join(BUNDLE, "data", "temporal"), max_images=5)
    assert x.shape == (5, 1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    run = load_exported(str(out), fmt)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(run(x), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(run(x[:1]), expected[:1], rtol=0, atol=1e-4)
    assert expected.std() > 0  # real, varied inputs: a constant output would hide a broken export
    if fmt == "onnx":  # ONNX Runtime itself, as a deployment would call it: named input, dynamic batch
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        image = session.get_inputs()[0]
        assert image.name == "image" and image.shape[1:] == [1, 64, 64] and not isinstance(image.shape[0], int)
        logits = torch.from_numpy(session.run(None, {"image": x[:3].numpy()})[0])
        torch.testing.assert_close(logits, expected[:3], rtol=0, atol=1e-4)


def _beside_spec(ckpt, folder, state):
    """``state`` saved as ``folder/model.pt`` next to a copy of the trained model's model_meta.json."""
    folder.mkdir()
    shutil.copy(os.path.join(os.path.dirname(ckpt), "model_meta.json"), folder)
    torch.save(state, folder / "model.pt")
    return str(folder / "model.pt")


def test_weights_are_loaded_strictly(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    extra = _beside_spec(ckpt, tmp_path / "extra", {**state, "reprogrammer.proj.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"Unexpected key\(s\).*reprogrammer\.proj\.weight"):
        bundle_network(BUNDLE, extra)
    missing = _beside_spec(ckpt, tmp_path / "missing", {k: v for k, v in state.items() if not k.startswith("head.")})
    with pytest.raises(CheckpointMismatchError, match=r"Missing key\(s\).*head\.weight"):
        bundle_network(BUNDLE, missing)
    # weights of a 5-class model beside a spec that says 3 classes: refused, not loaded partly
    other = tmp_path / "three"
    other.mkdir()
    _trained(other, class_names=["a", "b", "c"])
    shutil.copy(ckpt, other / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"size mismatch for head\.weight"):
        bundle_network(BUNDLE, str(other / "model.pt"))
    # the {"model": state dict} layout of a checkpoint dict is accepted too
    net, _ = bundle_network(BUNDLE, _beside_spec(ckpt, tmp_path / "nested", {"model": state}))
    torch.testing.assert_close(net.state_dict()["head.weight"], state["head.weight"])
    assert not net.training


def test_a_wrong_export_is_not_written(ckpt, tmp_path, monkeypatch):
    import monai_rd.export as export

    real = export.load_exported
    monkeypatch.setattr(export, "load_exported", lambda path, fmt: (lambda x: real(path, fmt)(x) + 1e-3))
    out = tmp_path / "student.pt2"
    with pytest.raises(RuntimeError, match="it was not written"):
        export_model(BUNDLE, str(out), "torch_export", ckpt=ckpt, images=IMAGES, max_images=2)
    assert os.listdir(tmp_path) == []


def test_command_line_takes_the_size_from_the_trained_model(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    ckpt = _trained(tmp_path / "models", image_size=32)
    out = tmp_path / "student.pt2"
    args = ["--bundle", BUNDLE, "--ckpt", ckpt, "--format", "torch_export", "--out", str(out), "--images", IMAGES]
    assert main(args + ["--batch_size", "2"]) == 0  # other --key value pairs are config overrides
    # model_meta.json's 32 px reached the preprocessing: the program was exported (and checked) at 32 px
    assert torch.export.load(str(out)).module()(torch.rand(3, 1, 32, 32)).shape == (3, 5)
    assert main(args + ["--student", "mobilenetv2"]) == 1
    assert "contradicts the trained model's 'resnet18'" in capsys.readouterr().err
    assert main(["--bundle", str(tmp_path), "--format", "onnx", "--out", str(out)]) == 1
    # a model.pt without the model_meta.json training writes: one line saying so, no traceback
    os.remove(tmp_path / "models" / "model_meta.json")
    assert main(args) == 1
    assert "model_meta.json is missing" in capsys.readouterr().err
    with pytest.raises(OptionError, match="--format must be one of"):
        export_model(BUNDLE, str(out), "tflite", ckpt=ckpt)


def test_a_3d_student_exports_from_one_volume(tmp_path):
    """Catches the one-image example being padded to a batch of 2 as if it were 2D (a 5D volume cannot be)."""
    bundle = os.path.join(REPO, "bundles", "rd_brain3d_classify")
    folder = tmp_path / "models"
    folder.mkdir()
    train = ConfigParser()
    train.read_config(os.path.join(bundle, "configs", "train.json"))
    train.update({"bundle_root": bundle, "ckpt_dir": str(folder)})
    write_model_spec(train.get_parsed_content("model_spec"), str(folder))
    torch.manual_seed(0)
    torch.save(train.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    images = tmp_path / "one"
    images.mkdir()
    name = "ch2_L_x012_y040_z029.nii.gz"  # one real 16^3 Colin27 cube
    shutil.copy(os.path.join(bundle, "data", "images", name), images / name)
    out = tmp_path / "student.pt2"
    report = export_model(bundle, str(out), "torch_export", ckpt=str(folder / "model.pt"), images=str(images))
    assert len(report["images"]) == 1 and report["single_max_abs_diff"] <= 1e-4
    net, parser = bundle_network(bundle, str(folder / "model.pt"))
    x, _ = preprocess_images(parser, str(images))
    assert x.shape == (1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(str(out), "torch_export")(x.repeat(3, 1, 1, 1, 1)),
                                   net(x).repeat(3, 1), rtol=0, atol=1e-4)


def test_bad_check_images_are_named_and_a_nan_image_is_not_blamed_on_the_exporter(tmp_path):
    """Catches a corrupt check image failing the export without its name, and a NaN image reported as the
    exporter's mismatch ("Report this with the bundle and torch version"), through the command line as typed."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    (tmp_path / "models").mkdir()
    ckpt = _trained(tmp_path / "models", image_size=32)
    images = tmp_path / "images"
    images.mkdir()
    pngs = sorted(os.listdir(IMAGES))[:3]
    for name in pngs[:2]:
        shutil.copy(os.path.join(IMAGES, name), images / name)
    data = open(os.path.join(IMAGES, pngs[2]), "rb").read()
    (images / "cut.png").write_bytes(data[: len(data) // 2])
    nan = np.ones((32, 32), np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan, mode="F").save(images / "nan.tif")
    cmd = [sys.executable, "-m", "monai_rd.export", "--bundle", BUNDLE, "--ckpt", ckpt, "--format", "torch_export",
           "--out", str(tmp_path / "m.pt2"), "--images", str(images)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("monai_rd.export: DataCheckError: 2 of the check images")
    assert f"{images / 'cut.png'}: not read (OSError: image file is truncated)" in last
    assert f"{images / 'nan.tif'}: NaN or infinite values" in last and "Report this" not in done.stderr
    assert not os.path.exists(tmp_path / "m.pt2")


def test_the_export_describes_the_trained_model_and_refuses_an_unknown_override(tmp_path, capsys):
    """Catches an export whose metadata describes the bundle's defaults (224 px, the demo's 5 classes) instead of the
    trained model, and a mistyped override ignored."""
    import json

    (tmp_path / "models").mkdir()
    ckpt = _trained(tmp_path / "models", image_size=32, class_names=["a", "b", "c"])
    out = tmp_path / "student.pt2"
    args = ["--bundle", BUNDLE, "--ckpt", ckpt, "--format", "torch_export", "--out", str(out), "--images", IMAGES]
    assert main(args) == 0
    meta = json.load(open(f"{out}.metadata.json"))
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [32, 32] and fmt["outputs"]["pred"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "a", "1": "b", "2": "c"}
    assert meta["monai_rd_model"]["class_names"] == ["a", "b", "c"] and meta["version"]  # the bundle's metadata kept
    assert meta["monai_rd_export"]["checkpoint"] == ckpt
    assert main(args + ["--batch_sise", "2"]) == 1
    assert "--batch_sise: did you mean --batch_size?" in capsys.readouterr().err
