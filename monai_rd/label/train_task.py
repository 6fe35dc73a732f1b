"""MONAI Label training of an RD bundle on the images labelled in the datastore, and the rule that publishes it.

MONAI Label's ``BundleTrainTask`` replaces ``train#dataset#data`` with the datastore's images, which an RD
bundle does not read: its teacher-feature cache is built from ``@datalist['training']``, so the cache misses the
labelled images; it also keeps the bundle's batch size (32 with ``drop_last``: no iteration on a few labels),
loads ``model.pt`` non-strictly and replaces the served model with whatever the run produced.
:class:`RDTrainTask` subclasses it and drives the bundle's ``train.json`` only through its top-level options:

- ``datalist``: ``{"training", "validation"}`` from the labelled images (class labels read by
  :func:`~monai_rd.label.class_labels.labelled_datalist`), split stratified by class with a seed
  (:func:`monai_rd.data.split_datalist`); the teacher cache is built from exactly these training images;
- ``batch_size``: the request's or the bundle's, at most the number of training images (at least 2);
- ``epochs`` (``max_epochs`` of the request), ``seed``, ``class_names`` (the served model's, else the bundle's),
  ``image_size``, ``device``, ``amp``, ``num_workers`` 0, and the server's ``--conf train_options``;
- ``ckpt_dir``/``output_dir``: a fresh run folder ``<model_dir>/label_runs/<UTC time>/{models,eval}``.

The run itself is MONAI's ``ConfigWorkflow`` over ``train.json`` (MONAI's ``trainer`` and ``evaluator`` bundle
properties give the hooks): with ``pretrained`` it starts from the served ``model.pt``, loaded strictly into the
config's ``network``, and a :class:`~monai_rd.label.train_stats.TrainStatsWriter` writes ``train_stats`` every
epoch. When the run has finished, its resume checkpoints are removed, the new and the served model are scored on
the run's validation images (:func:`~monai_rd.label.model_score.validation_score`), and the new one replaces the
served one (:func:`~monai_rd.label.served_model.publish_model`) only if it scores at least as well, or with the
request's ``force_publish``. A failed run never touches the served model; only the last ``keep_runs`` runs (and
replaced models) are kept. The server's infer task reloads the new files on its next request.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

import torch
from monai.bundle import ConfigWorkflow
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import device_list, name_to_device

from monai_rd.bundle.model_spec import MODEL_SPEC_FILE, as_class_names
from monai_rd.data.datalist import split_datalist, write_json_atomic
from monai_rd.errors import CheckpointMismatchError, DataCheckError, OptionError
from monai_rd.label.class_labels import labelled_datalist
from monai_rd.label.infer_task import RDClassifyInferTask
from monai_rd.label.model_score import validation_score
from monai_rd.label.served_model import MODEL_FILE, ServedStudent, check_model_file, prune_folders, publish_model
from monai_rd.label.train_stats import TrainStatsWriter
from monai_rd.utils.options import as_bool, as_float, as_int

__all__ = ["RUNS_FOLDER", "TRAIN_STATS_FILE", "RDTrainTask"]

logger = logging.getLogger(__name__)

RUNS_FOLDER = "label_runs"
TRAIN_STATS_FILE = "train_stats.json"
# the run's options this task sets; --conf train_options may not set them
OWNED_OPTIONS = ("datalist", "datalist_splits", "datalist_json", "ckpt_dir", "output_dir", "epochs", "batch_size",
                 "seed", "device", "amp", "num_workers", "class_names", "resume", "overwrite", "bundle_root")
# keys BundleTrainTask sets by config id (train#trainer#max_epochs, ...): an RD recipe is driven by its options
_BUNDLE_TASK_KEYS = ("train#trainer#max_epochs", "train#dataset#data", "validate#dataset#data", "train#handlers")
# what a finished run keeps: the model, its spec, the datalist it was trained on and eval/ (resume checkpoints go)
_RUN_KEEPS = (MODEL_FILE, MODEL_SPEC_FILE, "datalist.json")


class RDTrainTask(BundleTrainTask):
    """RD training of ``bundle_root``'s recipe on the datastore's class labels, then the publish rule.

    Request options (``POST /train/<model>`` params; defaults in :meth:`config`): ``max_epochs``, ``batch_size``
    (an upper bound), ``val_split`` (fraction of the labelled images held out), ``seed``, ``pretrained`` (start
    from the served model), ``force_publish`` (serve the new model even if it scores lower), ``label_tag``,
    ``device``, and for classification ``image_size`` (default: the served model's, else the bundle's).

    Args:
        bundle_root: the RD bundle folder.
        model_dir: the served models folder (default ``<bundle_root>/models``).
        conf: the app's ``--conf`` values (passed to ``BundleTrainTask``).
        keep_runs: how many run folders (and replaced models) to keep.
        train_options: bundle options set on every run (the server's ``--conf train_options`` for this model,
            e.g. ``teacher_weights``, ``cache_dir``); not the ones this task sets (:data:`OWNED_OPTIONS`).

    Raises:
        FileNotFoundError: the bundle has no ``configs/train.json``.
        OptionError: ``train_options`` sets an option this task sets, or ``keep_runs`` is below 1.
    """

    infer_task_class: type = RDClassifyInferTask
    min_labelled = 3  # 2 to train on (BatchNorm needs 2 per batch), 1 to validate

    def __init__(
        self,
        bundle_root: str,
        model_dir: str | None = None,
        conf: dict[str, str] | None = None,
        keep_runs: int = 3,
        train_options: dict[str, Any] | None = None,
    ):
        self.student = ServedStudent(bundle_root, model_dir)
        if not os.path.isfile(os.path.join(self.student.bundle_root, "configs", "train.json")):
            raise FileNotFoundError(f"{self.student.bundle_root}/configs/train.json is missing: not an RD bundle.")
        self.keep_runs = as_int(keep_runs, "keep_runs", min_value=1)
        self.train_options = dict(train_options or {})
        owned = sorted(set(self.train_options) & set(OWNED_OPTIONS))
        if owned:
            raise OptionError(f"--conf train_options may not set {owned}: the train task sets them from the request.")
        super().__init__(self.student.bundle_root, conf or {}, load_strict=True)
        self.name = os.path.basename(self.student.bundle_root)
        self.runs_dir = os.path.join(self.student.model_dir, RUNS_FOLDER)
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
            "force_publish": False,
            "label_tag": "final",
        }

    def class_names(self) -> list[str]:
        """The served model's classes, else those the bundle declares (``metadata.json``)."""
        return self.student.class_names()

    # the datalist ---------------------------------------------------------------------------------------------

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        return labelled_datalist(datastore, self.class_names(), tag=request.get("label_tag", "final"))

    def _too_few(self, n: int) -> None:
        if n < self.min_labelled:
            raise DataCheckError(
                f"{n} labelled image(s) for {self.name}: training needs at least {self.min_labelled} "
                f"({self.min_labelled - 1} to train on, 1 to validate); label more images."
            )

    def _val_split(self, request: dict[str, Any]) -> float:
        val_split = as_float(request.get("val_split", 0.2), "val_split")
        if not 0.0 < val_split < 1.0:
            raise OptionError(f"val_split must be in (0, 1), got {val_split!r}.")
        return val_split

    def _partition_datalist(self, datalist: list[dict[str, Any]], request: dict[str, Any], shuffle: bool = False):
        """A seeded split stratified by class; at least one validation image (the best model is chosen on it)."""
        self._too_few(len(datalist))
        split = split_datalist(datalist, val_fraction=self._val_split(request), test_fraction=0.0,
                               seed=as_int(request.get("seed", 0), "seed", min_value=0))
        train, val = split["training"], split["validation"]
        if not val:  # too few per class for the fraction to round to one image
            val, train = train[-1:], train[:-1]
        self._split = {"training": train, "validation": val}  # what _update_overrides gives the recipe
        return train, val

    # the run --------------------------------------------------------------------------------------------------

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # BundleTrainTask's loader is a handler under a config id, non-strict, for any file of the models folder;
        # run_single_gpu loads the served model.pt strictly instead
        return None

    def _batch_size(self, request: dict[str, Any]) -> int:
        bundle_batch = int(self._bundle_option("batch_size"))
        wanted = as_int(request.get("batch_size", bundle_batch), "batch_size", min_value=1)
        return max(2, min(wanted, len(self._split["training"])))

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        request, datalist = self._request, self._split
        for key in _BUNDLE_TASK_KEYS:
            overrides.pop(key, None)
        device = torch.device(overrides.get("device") or "cpu")
        overrides.update(self.train_options)
        overrides.update({
            "datalist": datalist,
            "datalist_splits": ["training", "validation"],  # no test split: every label is used
            "class_names": self.class_names(),
            "epochs": as_int(request.get("max_epochs", self._bundle_option("epochs")), "max_epochs", min_value=1),
            "batch_size": self._batch_size(request),
            "seed": as_int(request.get("seed", 0), "seed", min_value=0),
            "num_workers": 0,
            "ckpt_dir": os.path.join(self._run_dir, "models"),
            "output_dir": os.path.join(self._run_dir, "eval"),
            "datalist_json": os.path.join(self._run_dir, "models", "datalist.json"),
            "device": device,
            "amp": device.type == "cuda",
        })
        image_size = request.get("image_size")
        if image_size is None and self.student.exists() and self._pretrained():
            image_size = self.student.spec().get("image_size")
        if image_size is not None:
            overrides["image_size"] = as_int(image_size, "image_size", min_value=1)
        return overrides

    def _pretrained(self) -> bool:
        return as_bool(self._request.get("pretrained", True), "pretrained") and self.student.exists()

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """``train.json`` through MONAI's ``ConfigWorkflow``: initialize, the served weights into ``network`` when
        ``pretrained``, the statistics writer on ``trainer``, run, finalize."""
        workflow = ConfigWorkflow(config_file=self.bundle_config_path, meta_file=self.bundle_metadata_path,
                                  workflow_type="train", **overrides)
        workflow.initialize()
        if self._pretrained():
            network = workflow.parser.get_parsed_content("network")
            state = torch.load(check_model_file(self.student.model_path), map_location="cpu", weights_only=True)
            try:
                network.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise CheckpointMismatchError(
                    f"the served model does not fit the network this training builds ({e}); train from scratch with "
                    "pretrained false, or change --conf train_options back."
                ) from e
        stats_file = os.path.join(self._run_dir, "eval", TRAIN_STATS_FILE)
        TrainStatsWriter(stats_file, workflow.trainer, workflow.evaluator).attach(workflow.trainer)
        workflow.run()
        workflow.finalize()

    def stats(self) -> dict[str, Any]:
        """The newest run's statistics (see :class:`~monai_rd.label.train_stats.TrainStatsWriter`), ``{}`` before
        any run; ``run`` names the run folder (``label_runs/<run>``), ``published`` says whether it is served."""
        runs = sorted(os.listdir(self.runs_dir)) if os.path.isdir(self.runs_dir) else []
        for run in reversed(runs):
            path = os.path.join(self.runs_dir, run, "eval", TRAIN_STATS_FILE)
            if os.path.isfile(path):
                try:
                    with open(path) as f:
                        return {**json.load(f), "run": run}
                except (OSError, ValueError):
                    continue  # being replaced
        return {}

    # after the run: clean, score, publish, prune ----------------------------------------------------------------

    def _clean_run(self) -> None:
        models = os.path.join(self._run_dir, "models")
        for name in os.listdir(models) if os.path.isdir(models) else []:
            path = os.path.join(models, name)
            if name not in _RUN_KEEPS and os.path.isfile(path):
                os.remove(path)

    def _publish(self, request: dict[str, Any], device: str) -> dict[str, Any]:
        val = self._split["validation"]
        new_task = self.infer_task_class(self.student.bundle_root, os.path.join(self._run_dir, "models"))
        metric, new = validation_score(new_task, val, device)
        served = reason = None
        if self.student.exists():
            try:
                served = validation_score(self.infer_task_class(self.student.bundle_root, self.student.model_dir),
                                          val, device)[1]
            except Exception as e:  # a served model that no longer loads is replaced
                reason = f"the served model does not answer ({type(e).__name__})"
        force = as_bool(request.get("force_publish", False), "force_publish")
        published = force or served is None or new >= served
        if force:
            reason = "force_publish"
        elif served is None:
            reason = reason or "no model was served"
        else:
            reason = f"validation {metric} {new:.4f} {'>=' if published else '<'} the served model's {served:.4f}"
        if published:
            publish_model(os.path.join(self._run_dir, "models"), self.student.model_dir)
        decision = {"metric": metric, "val_metric": new, "served_val_metric": served, "published": published,
                    "publish_reason": reason}
        stats_file = os.path.join(self._run_dir, "eval", TRAIN_STATS_FILE)
        if os.path.isfile(stats_file):
            with open(stats_file) as f:
                write_json_atomic({**json.load(f), **decision}, stats_file)
        return decision

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train on the labelled images, then serve the new model if it scores at least as well as the served one.

        Returns:
            ``{"run": run folder name, "training": n, "validation": n, "val_metrics": the last epoch's validation
            metrics, "metric", "val_metric" (the new model's score), "served_val_metric" (the served model's, None
            if none), "published", "publish_reason"}``.

        Raises:
            DataCheckError: too few labelled images, or a label naming no known class.
            CheckpointMismatchError: ``model_filename`` names a file other than ``model.pt``, or the served model
                does not fit the network (``pretrained``).
            OptionError: a request option has a value it cannot take.
        """
        request = dict(request)
        check_model_file(request.get("model_filename") or MODEL_FILE)
        request["model_filename"] = MODEL_FILE
        request["multi_gpu"] = False  # multi_gpu_train.json needs torchrun; MONAI Label's launcher edits the bundle
        request["tracking"] = "None"
        request["device"] = name_to_device(request.get("device"))  # a GPU when there is one
        as_class_names(self.class_names())
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self._run_dir = os.path.join(self.runs_dir, stamp)
        self._request = request
        super().__call__(request, datastore)  # fetches and splits through the methods above, then run_single_gpu
        self._clean_run()
        decision = self._publish(request, request["device"])
        prune_folders(self.runs_dir, "", self.keep_runs)
        prune_folders(self.student.model_dir, "replaced-", self.keep_runs)
        metrics_file = os.path.join(self._run_dir, "eval", "val_metrics.json")
        metrics: Any = None
        if os.path.isfile(metrics_file):
            with open(metrics_file) as f:
                history = json.load(f)
            metrics = history.get("final", history)  # monai_rd.handlers.MetricsJSONWriter: the last epoch's
        return {"run": stamp, "training": len(self._split["training"]), "validation": len(self._split["validation"]),
                "val_metrics": metrics, **decision}
