"""The run folder: no silent overwrite of a previous run, resume from the newest complete checkpoint."""

import os

import pytest
import torch

from monai_rd.bundle import latest_checkpoint, prepare_run_folder
from monai_rd.errors import CheckpointMismatchError, OutputFolderError


def _run_files(tmp_path):
    ckpt, out = tmp_path / "models", tmp_path / "eval"
    ckpt.mkdir()
    out.mkdir()
    (ckpt / "model.pt").write_bytes(b"best")
    (out / "val_metrics.json").write_text("{}")
    (ckpt / "datalist.json").write_text("{}")
    return str(ckpt), str(out)


def test_fresh_folders_pass(tmp_path):
    assert prepare_run_folder(str(tmp_path / "m"), str(tmp_path / "e"), resume=False, overwrite=False) is None
    assert os.path.isdir(tmp_path / "m") and os.path.isdir(tmp_path / "e")


def test_previous_run_is_not_overwritten_silently(tmp_path):
    ckpt, out = _run_files(tmp_path)
    with pytest.raises(OutputFolderError, match="--resume true.*--overwrite true"):
        prepare_run_folder(ckpt, out, resume=False, overwrite=False)
    assert (tmp_path / "models" / "model.pt").read_bytes() == b"best"


def test_overwrite_moves_previous_files_aside(tmp_path):
    ckpt, out = _run_files(tmp_path)
    prepare_run_folder(ckpt, out, resume=False, overwrite=True)
    assert not os.path.exists(os.path.join(ckpt, "model.pt"))
    moved = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs if "replaced-" in r]
    assert sorted(map(os.path.basename, moved)) == ["model.pt", "val_metrics.json"]
    assert os.path.isfile(os.path.join(ckpt, "datalist.json"))  # derived from the data, kept in place


def test_resume_picks_the_newest_checkpoint_and_checks_its_fingerprint(tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    for epoch in (2, 10):  # numeric, not lexical: epoch 10 is newer than 2
        torch.save(
            {"run_state": {"fingerprint": {"epochs": 12, "batch_size": 4}}}, ckpt / f"checkpoint_epoch={epoch}.pt"
        )
    assert latest_checkpoint(str(ckpt)).endswith("checkpoint_epoch=10.pt")
    path = prepare_run_folder(str(ckpt), str(tmp_path / "e"), resume=True, overwrite=False,
                              fingerprint={"epochs": 12, "batch_size": 4})
    assert path.endswith("checkpoint_epoch=10.pt")
    with pytest.raises(CheckpointMismatchError, match="batch_size: checkpoint 4, now 8"):
        prepare_run_folder(str(ckpt), str(tmp_path / "e"), resume=True, overwrite=False,
                           fingerprint={"epochs": 12, "batch_size": 8})


def test_resume_without_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint_epoch=\\*.pt.*run without --resume"):
        prepare_run_folder(str(tmp_path / "m"), str(tmp_path / "e"), resume=True, overwrite=False)


def test_checkpoint_without_fingerprint_is_refused(tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    torch.save({"network": {}}, ckpt / "checkpoint_epoch=1.pt")
    with pytest.raises(CheckpointMismatchError, match="no run fingerprint"):
        prepare_run_folder(str(ckpt), str(tmp_path / "e"), resume=True, overwrite=False, fingerprint={"epochs": 1})


def test_unwritable_folder_is_found_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a folder below a regular file cannot be created, even as root
    with pytest.raises(OutputFolderError, match="not writable"):
        prepare_run_folder(str(blocker / "models"), str(tmp_path / "e"), resume=False, overwrite=False)
