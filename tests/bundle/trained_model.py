"""A models folder as training writes it, without training: for the tests of what reads a trained model."""

import os

import torch
from monai.bundle import ConfigParser

from monai_rd.bundle import write_model_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_trained_model(bundle: str, folder, **options) -> str:
    """Write ``folder/model.pt`` (the student of ``bundle``'s train.json with ``options``, random weights, seeded)
    and ``folder/model_meta.json`` (its spec), as a training run with those options would.

    Args:
        bundle: the bundle's name (``rd_demo``) or folder.
        folder: the models folder (created).
        options: training options (``image_size=32``, ``class_names=[...]``, ...).

    Returns:
        The path of ``model.pt``.
    """
    root = bundle if os.path.isdir(bundle) else os.path.join(REPO, "bundles", bundle)
    os.makedirs(folder, exist_ok=True)
    train = ConfigParser()
    train.read_config(os.path.join(root, "configs", "train.json"))
    train.update({"bundle_root": root, "ckpt_dir": str(folder), **options})
    write_model_spec(train.get_parsed_content("model_spec"), str(folder))
    torch.manual_seed(0)
    path = os.path.join(str(folder), "model.pt")
    torch.save(train.get_parsed_content("network_def").state_dict(), path)
    return path
