"""Fixtures for the teacher-registry tests: an empty torch hub cache and an offline Hugging Face hub."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Point the torch hub cache to an empty folder and forbid any Hugging Face / URL download."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    try:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"), raising=False)
    except ImportError:
        pass

    def no_network(url, dst, *args, **kwargs):
        raise OSError(f"network is unreachable (test): {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


@pytest.fixture
def randomise():
    """A function giving a model non-default weights and BatchNorm statistics (so a wrong tap or mapping shows)."""

    def apply(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in model.state_dict().items():
                if t.dtype.is_floating_point:
                    t.copy_(torch.rand(t.shape, generator=g) * 0.1 + (1.0 if "running_var" in name else 0.0))
        return model.eval()

    return apply
