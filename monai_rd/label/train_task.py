"""MONAI Label training of an RD bundle on the images labelled in the datastore.

MONAI Label's ``BundleTrainTask`` replaces ``train#dataset#data`` with the datastore's images, which an RD
bundle does not read: its teacher-feature cache is built from ``@datalist['training']``, so the cache misses the
labelled images; it also keeps the bundle's batch size (32 with ``drop_last``: no iteration on a few labels)
and loads ``model.pt`` non-strictly. :class:`RDTrainTask` subclasses it and sets the bundle's own options
instead:

- ``datalist``: ``{"training", "validation"}`` from the labelled images (class labels read by
  :func:`~monai_rd.label.class_labels.labelled_datalist`), split stratified by class with a seed
  (:func:`monai_rd.data.split_datalist`); the teacher cache is built from exactly these training images;
- ``batch_size``: the bundle's, or the number of training images if fewer (at least 2);
- ``epochs`` (``max_epochs`` of the request), ``class_names`` (the served model's, else the bundle's);
- ``ckpt_dir``/``output_dir``: a fresh run folder ``<model_dir>/label_runs/<UTC time>/{models,eval}``; the
  served files are only replaced (see :func:`~monai_rd.label.served_model.publish_model`) when the run finished,
  so a failed training never takes the served model away. The server's infer task reloads the new files on its
  next request.

With ``pretrained`` the run starts from the served ``model.pt``, loaded strictly.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import device_list, name_to_device

from monai_rd.bundle.model_spec import as_class_names
from monai_rd.data.datalist import split_datalist
from monai_rd.errors import DataCheckError, OptionError
from monai_rd.label.class_labels import labelled_datalist
from monai_rd.label.served_model import MODEL_FILE, ServedStudent, check_model_file, publish_model

__all__ = ["RDTrainTask"]

# keys BundleTrainTask sets that an RD recipe drives from other options (see _update_overrides)
_REPLACED_KEYS = ("train#trainer#max_epochs", "train#dataset#data", "validate#dataset#data")


class RDTrainTask(BundleTrainTask):
    """RD training of ``bundle_root``'s recipe on the datastore's labelled images, then serve the new student.

    Request options (``POST /train/<model>`` params; defaults in :meth:`config`): ``max_epochs``, ``batch_size``
    (an upper bound), ``val_split`` (fraction of each class held out), ``seed``, ``pretrained`` (start from the
    served model), ``image_size`` (default: the served model's, else the bundle's), ``label_tag``, ``device``.

    Args:
        bundle_root: the RD bundle folder.
        model_dir: the served models folder (default ``<bundle_root>/models``).
        conf: the app's ``--conf`` values (passed to ``BundleTrainTask``).

    Raises:
        FileNotFoundError: the bundle has no ``configs/train.json``.
    """

    def __init__(self, bundle_root: str, model_dir: str | None = None, conf: dict[str, str] | None = None):
        self.student = ServedStudent(bundle_root, model_dir)
        if not os.path.isfile(os.path.join(self.student.bundle_root, "configs", "train.json")):
            raise FileNotFoundError(f"{self.student.bundle_root}/configs/train.json is missing: not an RD bundle.")
        super().__init__(self.student.bundle_root, conf or {}, load_strict=True)
        self._request: dict[str, Any] = {}
        self._run_dir: str | None = None
        self._split: dict[str, list] = {}

    def _bundle_option(self, key: str) -> Any:
        return self.bundle_config.get_parsed_content(key, instantiate=False)

    def config(self) -> dict[str, Any]:
        return {
            "device": device_list(),
            "max_epochs": int(self._bundle_option("epochs")),
            "batch_size": int(self._bundle_option("batch_size")),
            "val_split": 0.2,
            "seed": 0,
            "pretrained": True,
            "label_tag": "final",
        }

    def class_names(self) -> list[str]:
        """The served model's classes, else those the bundle declares (``metadata.json``)."""
        return self.student.class_names()

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        return labelled_datalist(datastore, self.class_names(), tag=request.get("label_tag", "final"))

    def _partition_datalist(self, datalist: list[dict[str, Any]], request: dict[str, Any], shuffle: bool = False):
        """A seeded split stratified by class; at least one validation image (the best model is chosen on it)."""
        if len(datalist) < 3:
            raise DataCheckError(
                f"{len(datalist)} labelled image(s): RD training needs at least 3 (2 to train on, 1 to validate); "
                "label more images."
            )
        val_split = float(request.get("val_split", 0.2))
        if not 0.0 < val_split < 1.0:
            raise OptionError(f"val_split must be in (0, 1), got {val_split!r}.")
        split = split_datalist(datalist, val_fraction=val_split, test_fraction=0.0, seed=int(request.get("seed", 0)))
        train, val = split["training"], split["validation"]
        if not val:  # too few per class for the fraction to round to one image
            val, train = train[-1:], train[:-1]
        self._split = {"training": train, "validation": val}  # what _update_overrides gives the recipe
        return train, val

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # BundleTrainTask's loader is non-strict and takes any file of the bundle's models folder
        if pretrained and self.student.exists():
            path = check_model_file(self.student.model_path)
            train_handlers.insert(0, {"_target_": CheckpointLoader.__name__, "load_path": path,
                                      "load_dict": {"model": "@network"}, "strict": True, "map_location": "cpu"})

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        request, datalist = self._request, self._split
        for key in _REPLACED_KEYS:
            overrides.pop(key, None)
        bundle_batch = int(self._bundle_option("batch_size"))
        batch_size = max(2, min(int(request.get("batch_size", bundle_batch)), len(datalist["training"])))
        image_size = request.get("image_size")
        if image_size is None and self.student.exists() and request.get("pretrained", True):
            image_size = self.student.spec()["image_size"]
        overrides.update({
            "datalist": datalist,
            "datalist_splits": ["training", "validation"],  # no test split: every label is used
            "class_names": self.class_names(),
            "epochs": int(request.get("max_epochs", self._bundle_option("epochs"))),
            "batch_size": batch_size,
            "seed": int(request.get("seed", 0)),
            "num_workers": 0,
            "ckpt_dir": os.path.join(self._run_dir, "models"),
            "output_dir": os.path.join(self._run_dir, "eval"),
            "datalist_json": os.path.join(self._run_dir, "models", "datalist.json"),
            "device": torch.device(overrides.get("device") or "cpu"),
            "amp": torch.cuda.is_available() and str(overrides.get("device", "")).startswith("cuda"),
        })
        if image_size is not None:
            overrides["image_size"] = int(image_size)
        return overrides

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train on the labelled images, then publish the run's ``model.pt`` as the served model.

        Returns:
            ``{"model": served model.pt, "run": run folder, "training": n, "validation": n, "val_metrics": the
            last epoch's validation metrics}``.

        Raises:
            DataCheckError: fewer than 3 labelled images, or a label naming no known class.
            CheckpointMismatchError: ``model_filename`` names a file other than ``model.pt``.
        """
        request = dict(request)
        check_model_file(request.get("model_filename") or MODEL_FILE)
        request["model_filename"] = MODEL_FILE
        request["multi_gpu"] = False  # multi_gpu_train.json needs torchrun; MONAI Label's launcher edits the bundle
        request["tracking"] = "None"
        request["device"] = name_to_device(request.get("device"))  # a GPU when there is one
        as_class_names(self.class_names())
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self._run_dir = os.path.join(self.student.model_dir, "label_runs", stamp)
        self._request = request
        super().__call__(request, datastore)  # fetches and splits through the methods above, then runs train.json
        train, val = self._split["training"], self._split["validation"]
        served = publish_model(os.path.join(self._run_dir, "models"), self.student.model_dir)
        metrics_file = os.path.join(self._run_dir, "eval", "val_metrics.json")
        metrics: Any = None
        if os.path.isfile(metrics_file):
            with open(metrics_file) as f:
                history = json.load(f)
            metrics = history.get("final", history)  # monai_rd.handlers.MetricsJSONWriter: the last epoch's
        return {"model": served, "run": self._run_dir, "training": len(train), "validation": len(val),
                "val_metrics": metrics}
