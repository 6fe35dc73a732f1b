"""The deployed student a MONAI Label server answers with: a bundle's ``model.pt`` and ``model_meta.json``.

Only ``model.pt`` is ever served: it holds the student and the shared classifier, and nothing else (no teacher,
no Φ, no optimizer). A training checkpoint (``checkpoint_epoch=N.pt``), a TorchScript export or any other file is
refused by name, and ``model.pt`` is loaded strictly, so a file that does not match the network that
``model_meta.json`` describes is refused with the keys that differ instead of answering with random weights.

The network, preprocessing and postprocessing come from the bundle's own ``configs/inference.json`` (parsed with
``ckpt_dir`` set to the served folder), so MONAI Label's scores are those of ``python -m monai.bundle run
--config_file <bundle>/configs/inference.json``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from typing import Any

import torch

from monai_rd.bundle.model_spec import MODEL_SPEC_FILE, read_model_spec
from monai_rd.errors import CheckpointMismatchError
from monai_rd.export import bundle_network
from monai_rd.label.http_errors import MissingModelError

__all__ = ["MODEL_FILE", "ServedStudent", "check_model_file", "prune_folders", "publish_model"]

MODEL_FILE = "model.pt"


def check_model_file(path: str) -> str:
    """``path`` if it names a deployed student (``model.pt``), else refuse it.

    Args:
        path: a model file the server was asked to use.

    Returns:
        ``path``.

    Raises:
        CheckpointMismatchError: the file is not called ``model.pt`` (a training checkpoint, an export, ...).
    """
    if os.path.basename(path) != MODEL_FILE:
        raise CheckpointMismatchError(
            f"{path} is not a deployed student: MONAI Label serves only {MODEL_FILE} (the student and shared "
            "classifier with the best validation metric). Training checkpoints (checkpoint_epoch=N.pt) hold Φ and "
            f"optimizer state and exports are not loadable state dicts; point the app at the folder of {MODEL_FILE}."
        )
    return path


def _stat_key(*paths: str) -> tuple:
    key = []
    for p in paths:
        s = os.stat(p)
        key.append((s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(key)


class ServedStudent:
    """The student of ``<model_dir>/model.pt``, built and preprocessed as the bundle's ``inference.json`` says.

    The network is rebuilt when ``model.pt`` or ``model_meta.json`` changes on disk (a finished training publishes
    new files), so the server answers with the newest model without a restart.

    Args:
        bundle_root: the bundle folder (``configs/inference.json`` and ``configs/metadata.json``).
        model_dir: the folder of the served ``model.pt`` and ``model_meta.json``; default ``<bundle_root>/models``.

    Raises:
        FileNotFoundError: the bundle has no ``configs/inference.json``.
    """

    def __init__(self, bundle_root: str, model_dir: str | None = None):
        self.bundle_root = os.path.abspath(bundle_root)
        self.model_dir = os.path.abspath(model_dir or os.path.join(self.bundle_root, "models"))
        self.config_file = os.path.join(self.bundle_root, "configs", "inference.json")
        if not os.path.isfile(self.config_file):
            raise FileNotFoundError(f"{self.config_file} is missing: --conf bundle must name an RD bundle folder.")
        self.model_path = os.path.join(self.model_dir, MODEL_FILE)
        self.spec_path = os.path.join(self.model_dir, MODEL_SPEC_FILE)
        self._loaded: dict[str, tuple[tuple, Any]] = {}

    def exists(self) -> bool:
        """Whether a trained model is there to serve."""
        return os.path.isfile(self.model_path) and os.path.isfile(self.spec_path)

    def spec(self) -> dict[str, Any]:
        """The served model's ``model_meta.json``, checked against the bundle (see ``read_model_spec``)."""
        return read_model_spec(self.model_dir, self.bundle_root, task=self.task())

    def _data_format(self) -> dict[str, Any]:
        with open(os.path.join(self.bundle_root, "configs", "metadata.json")) as f:
            return json.load(f).get("network_data_format", {})

    def class_names(self) -> list[str]:
        """The served model's classes (its ``model_meta.json``), or before any model is trained the bundle's
        ``metadata.json`` ones."""
        if self.exists():
            return list(self.spec()["class_names"])
        channels = self._data_format().get("outputs", {}).get("pred", {}).get("channel_def", {})
        return [channels[k] for k in sorted(channels, key=int)]

    def spatial_dims(self) -> int:
        """The served model's spatial dims, or before any model is trained those of the bundle's input."""
        if self.exists():
            return int(self.spec()["spatial_dims"])
        return len(self._data_format().get("inputs", {}).get("image", {}).get("spatial_shape", [0, 0]))

    def task(self) -> str:
        """``"segmentation"`` when the bundle's ``metadata.json`` declares a segmentation output, else
        ``"classification"``."""
        is_seg = self._data_format().get("outputs", {}).get("pred", {}).get("format") == "segmentation"
        return "segmentation" if is_seg else "classification"

    def load(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """The network (eval mode, on ``device``), preprocessing, postprocessing and spec of the served model.

        Args:
            device: where to run the network.

        Returns:
            ``{"network", "preprocessing", "postprocessing", "inferer", "spec", "sha256"}`` (``inferer``: the
            config's, e.g. a segmentation bundle's sliding window; None if it has none; ``sha256``: of ``model.pt``,
            which tells a client which model answered); the same objects until the files change.

        Raises:
            MissingModelError: no ``model.pt`` or ``model_meta.json`` in the served folder (nothing trained yet).
            CheckpointMismatchError: ``model.pt`` does not load strictly into the network the spec describes, or the
                spec belongs to another bundle or monai_rd version.
        """
        device = torch.device(device)
        if not self.exists():
            missing = self.model_path if not os.path.isfile(self.model_path) else self.spec_path
            raise MissingModelError(
                f"{missing} is missing: no trained model to serve yet. Train one (POST /train/<model> on "
                "labelled images, or the bundle's train.json) or point --conf models at a trained run's models folder."
            )
        key = _stat_key(self.model_path, self.spec_path)
        cached = self._loaded.get(str(device))
        if cached is not None and cached[0] == key:
            return cached[1]
        # the same strict load as `python -m monai_rd.export` (one load sequence for every deployment path)
        network, parser = bundle_network(self.bundle_root, self.model_path, {"device": device})
        spec = parser.get_parsed_content("model_spec")
        loaded = {
            "network": network.to(device),
            "preprocessing": parser.get_parsed_content("preprocessing", instantiate=True),
            "postprocessing": parser.get_parsed_content("postprocessing", instantiate=True),
            "inferer": parser.get_parsed_content("inferer", instantiate=True) if "inferer" in parser else None,
            "spec": spec,
            "sha256": _sha256(self.model_path),
        }
        self._loaded[str(device)] = (key, loaded)
        return loaded

    def probabilities(self, image: str, device: str | torch.device = "cpu", mc_samples: int = 1) -> torch.Tensor:
        """Class probabilities of the served model for one image, on the network's input grid.

        With dropout in the student and ``mc_samples`` > 1, the samples are Monte Carlo dropout passes (dropout on,
        everything else in eval mode); without dropout one deterministic pass is returned.

        Args:
            image: the image file (or DICOM series folder) as the bundle's ``inference.json`` reads it.
            device: where to run the network.
            mc_samples: the number of dropout passes.

        Returns:
            ``(R, C, *spatial)`` probabilities (softmax over classes, or sigmoid per class for a multi-label model),
            ``R`` = ``mc_samples`` with dropout, else 1; ``spatial`` empty for a classification model.
        """
        loaded = self.load(device)
        network, inferer = loaded["network"], loaded["inferer"]
        x = loaded["preprocessing"]({"image": image})["image"][None].to(device)
        dropout = [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
        passes = max(1, int(mc_samples)) if dropout else 1
        outputs = []
        try:
            for m in dropout:
                m.train(passes > 1)
            with torch.no_grad():
                for _ in range(passes):
                    outputs.append(inferer(x, network) if inferer is not None else network(x))
        finally:
            for m in dropout:
                m.eval()
        logits = torch.cat([torch.as_tensor(o).float() for o in outputs]).cpu()
        return torch.sigmoid(logits) if loaded["spec"].get("multi_label") else torch.softmax(logits, dim=1)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_model(run_ckpt_dir: str, model_dir: str) -> str:
    """Make a finished run's ``model.pt`` and ``model_meta.json`` the served ones.

    The previous served files move to ``<model_dir>/replaced-<UTC time>/`` (the train task keeps the last few: see
    :func:`prune_folders`); the new ones are
    copied under a temporary name and renamed, ``model_meta.json`` first, so a server never reads half a file.

    Args:
        run_ckpt_dir: the training run's models folder.
        model_dir: the served folder.

    Returns:
        The served ``model.pt`` path.

    Raises:
        FileNotFoundError: the run wrote no ``model.pt`` or ``model_meta.json``.
    """
    names = (MODEL_SPEC_FILE, MODEL_FILE)
    for name in names:
        if not os.path.isfile(os.path.join(run_ckpt_dir, name)):
            raise FileNotFoundError(f"{os.path.join(run_ckpt_dir, name)} is missing: the training run saved no model.")
    os.makedirs(model_dir, exist_ok=True)
    old = [n for n in names if os.path.isfile(os.path.join(model_dir, n))]
    if old:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        keep = os.path.join(model_dir, f"replaced-{stamp}")
        os.makedirs(keep)
        for n in old:
            shutil.copy2(os.path.join(model_dir, n), os.path.join(keep, n))
    for name in names:
        tmp = os.path.join(model_dir, f".{name}.publishing")
        shutil.copyfile(os.path.join(run_ckpt_dir, name), tmp)
        os.replace(tmp, os.path.join(model_dir, name))
    return os.path.join(model_dir, MODEL_FILE)


def prune_folders(folder: str, prefix: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` sub-folders of ``folder`` whose names start with ``prefix``.

    The names end in a UTC time stamp (``label_runs/<time>``, ``replaced-<time>``), so name order is age order.

    Args:
        folder: the parent folder (nothing happens if it does not exist).
        prefix: the sub-folders concerned (``""``: every sub-folder).
        keep: how many of the newest to keep (at least 1).

    Returns:
        The removed folders' names.
    """
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith(prefix) and os.path.isdir(os.path.join(folder, n)))
    removed = names[: max(0, len(names) - max(1, int(keep)))]
    for name in removed:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return removed
