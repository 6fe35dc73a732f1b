"""Strict checkpoint loading, SHA-256 checks and offline errors of monai_rd.networks.teachers.checkpoint."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn as nn

from monai_rd.networks.teachers.checkpoint import (
    CheckpointKeyError,
    UnsafeCheckpointError,
    WeightsUnavailableError,
    check_sha256,
    extract_state_dict,
    load_into,
    load_state_dict_file,
    resolve_weights,
    select_prefix,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_load_into_names_missing_and_unexpected_keys():
    state = _net().state_dict()
    del state["1.running_var"]
    state["2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointKeyError) as err:
        load_into(_net(), state, source="ckpt.pth")
    msg = str(err.value)
    assert "1.running_var" in msg and "missing" in msg
    assert "2.weight" in msg and "unexpected" in msg
    assert "ckpt.pth" in msg


def test_load_into_names_shape_mismatch_and_loads_exact_values():
    state = _net().state_dict()
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(CheckpointKeyError, match=r"0\.weight: checkpoint \(4, 3, 5, 5\) vs model \(4, 3, 3, 3\)"):
        load_into(_net(), state, source="x")
    src = _net()
    with torch.no_grad():
        src[0].weight.normal_()
    dst = load_into(_net(), src.state_dict(), source="x")
    assert torch.equal(dst[0].weight, src[0].weight)


def test_load_into_ignore_only_applies_to_unexpected_keys():
    state = _net().state_dict()
    state["fc.weight"] = torch.zeros(2, 2)
    load_into(_net(), state, source="x", ignore=("fc.*",))  # ignored head: fine
    del state["0.bias"]
    with pytest.raises(CheckpointKeyError, match=r"0\.bias"):
        load_into(_net(), state, source="x", ignore=("fc.*", "0.*"))  # a model key can never be ignored


def test_sha256_checked(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_net().state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    check_sha256(path, digest)
    check_sha256(path, digest[:12].upper())
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        check_sha256(path, "0" * 64)
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        resolve_weights(path, filename="w.pth", name="t", sha256="deadbeef" * 8)
    with pytest.raises(ValueError):
        check_sha256(path, "abc")


def test_weights_only_refuses_pickled_objects(tmp_path):
    """Catches a pickled file either unpickled (running its code) or refused with torch's text, which suggests
    loading it with weights_only=False: the message names the object and how to save the weights alone."""
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _net().state_dict(), "obj": _net()}, path)  # a pickled module, not plain tensors
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    text = str(info.value)
    assert str(path) in text and "torch.nn.modules.container.Sequential" in text
    assert "torch.save(model.state_dict()" in text and "safetensors" in text and "weights_only=False" not in text


def test_safetensors_and_nested_checkpoints(tmp_path):
    from safetensors.torch import save_file

    state = _net().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    loaded = load_state_dict_file(tmp_path / "m.safetensors")
    assert set(loaded) == set(state)
    nested = {"epoch": 3, "state_dict": {"module.visual." + k: v for k, v in state.items()}}
    flat = extract_state_dict(nested)
    assert set(select_prefix(flat, "module.visual.")) == set(state)
    with pytest.raises(CheckpointKeyError):
        extract_state_dict({"epoch": 3})


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights(tmp_path / "nope.pth", filename="nope.pth", name="t")


def test_offline_url_download_names_file_and_place(offline_cache):
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(None, filename="fam/model-1234.pth", name="t", url="https://example.org/model-1234.pth")
    msg = str(err.value)
    assert "`model-1234.pth`" in msg
    assert str(offline_cache / "fam" / "model-1234.pth") in msg
    assert "https://example.org/model-1234.pth" in msg


def test_offline_hf_download_names_file_and_place(offline_cache):
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(
            None, filename="x/pytorch_model.bin", name="t", hf_repo="org/repo", hf_filename="pytorch_model.bin"
        )
    msg = str(err.value)
    assert "`pytorch_model.bin`" in msg and "org/repo" in msg
    assert str(offline_cache / "x" / "pytorch_model.bin") in msg


def test_file_placed_in_cache_is_used_offline(offline_cache):
    target = offline_cache / "fam" / "w.pth"
    target.parent.mkdir(parents=True)
    torch.save(_net().state_dict(), target)
    found = resolve_weights(None, filename="fam/w.pth", name="t", url="https://example.org/w.pth")
    assert found == target
