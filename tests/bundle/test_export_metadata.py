"""`monai.bundle ckpt_export` as documented embeds metadata that describes the trained model, or refuses to."""

import json
import os
import subprocess
import sys

import pytest
import torch
from trained_model import REPO, write_trained_model  # tests/bundle, on sys.path under pytest

CONFIGS = os.path.join(REPO, "bundles", "rd_demo", "configs")


def _ckpt_export(tmp_path, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
           "--ckpt_file", str(tmp_path / "models" / "model.pt"), "--meta_file", os.path.join(CONFIGS, "metadata.json"),
           "--config_file", os.path.join(CONFIGS, "inference.json"), "--ckpt_dir", str(tmp_path / "models"), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ckpt_export_of_another_size_and_classes_refuses_the_bundles_metadata_then_embeds_the_models(tmp_path):
    """Catches a 32 px, 3-class model exported with metadata saying the bundle's 64 px and 5 classes, and a mistyped
    --key of ckpt_export ignored."""
    write_trained_model("rd_demo", tmp_path / "models", image_size=32, class_names=["a", "b", "c"])
    done = _ckpt_export(tmp_path)
    assert done.returncode == 1 and not os.path.exists(tmp_path / "model.ts")
    last = [ln for ln in done.stderr.strip().splitlines() if ln.startswith("monai_rd:")][-1]
    assert last.startswith("monai_rd: OptionError: the metadata the export would embed (--meta_file) describes another")
    assert "inputs#image#spatial_shape: [64, 64] (the model: [32, 32])" in last
    assert "outputs#pred#num_channels: 5 (the model: 3)" in last
    fix = f"%{tmp_path / 'models' / 'model_meta.json'}#network_data_format"
    assert f'--_meta_#network_data_format "{fix}"' in last

    done = _ckpt_export(tmp_path, "--_meta_#network_data_format", fix, "--input_dri", "x")
    assert done.returncode == 1 and "--input_dri: did you mean --input_dir" in done.stderr

    done = _ckpt_export(tmp_path, "--_meta_#network_data_format", fix)
    assert done.returncode == 0, done.stderr[-3000:]
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [32, 32] and fmt["outputs"]["pred"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "a", "1": "b", "2": "c"} and meta["version"] == "0.1.0"
