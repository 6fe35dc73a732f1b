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
