"""A MONAI Label app that serves and trains the deployed students of RD bundles.

``apps/monailabel/main.py`` exposes :class:`RDLabelApp`; start it with::

    monailabel start_server --app apps/monailabel --studies <folder of images> --conf bundle bundles/rd_demo

``--conf`` values (strings, as MONAI Label passes them):

- ``bundle``: one or more RD bundle folders, comma-separated (required). Each gives a model named after its
  folder (``rd_demo``) with an infer task, a train task, an uncertainty scoring method and strategy
  (``entropy_<model>``): for a classification bundle
  :class:`~monai_rd.label.infer_task.RDClassifyInferTask` and :class:`~monai_rd.label.train_task.RDTrainTask`
  (class labels); for a segmentation bundle (its ``metadata.json`` declares a ``segmentation`` output, e.g.
  ``rd_brain_segment_2d``) :class:`~monai_rd.label.segment_infer_task.RDSegmentInferTask` and
  :class:`~monai_rd.label.segment_train_task.RDSegmentTrainTask` (label maps drawn in a client).
- ``models``: the served models folder (default ``<bundle>/models``): one folder for one bundle, or
  ``<model>=<folder>`` pairs, comma-separated; a training started from MONAI Label publishes its ``model.pt``
  there when it scores at least as well as the served one.
- ``model_file``: refused unless it is ``<models>/model.pt``: only the deployed student is served.
- ``keep_runs``: how many training runs (``<models>/label_runs/<time>``) and replaced models to keep (default 3).
- ``train_options``: bundle options for every training of a model, as a JSON object ``{"<model>": {"<option>":
  value}}`` or the path of a JSON file holding one (e.g. ``teacher_weights``, ``cache_dir``, a smaller student).

What a client sends is checked before it reaches a file: ids and tags are names (:class:`RDDatastore`), an image
to infer on is a datastore id or the request's own upload (:class:`~monai_rd.label.uploads.UploadFolder`), and
labels are checked against the served models when saved. Every refusal is an HTTP status with its reason
(:mod:`monai_rd.label.http_errors`), and no answer carries a server path
(:class:`~monai_rd.label.redaction.PathRedactor`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import nibabel as nib
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from monai_rd.errors import DataCheckError, OptionError
from monai_rd.label.active_learning import EntropyScoring, EntropyStrategy
from monai_rd.label.batch_infer import RDBatchInferTask
from monai_rd.label.class_labels import class_index, read_class_label
from monai_rd.label.datastore import IMAGE_PATTERNS, RDDatastore, RDSessions
from monai_rd.label.http_errors import http_error, refusal
from monai_rd.label.infer_task import RDClassifyInferTask
from monai_rd.label.mask_labels import conform_label_map, is_label_map
from monai_rd.label.redaction import PathRedactor, redact_task_status, redacted_output
from monai_rd.label.segment_infer_task import RDSegmentInferTask
from monai_rd.label.segment_train_task import RDSegmentTrainTask
from monai_rd.label.served_model import ServedStudent, check_model_file
from monai_rd.label.train_task import RDTrainTask
from monai_rd.label.uploads import UploadFolder
from monai_rd.utils.options import as_int

__all__ = ["IMAGE_PATTERNS", "RDLabelApp"]


def _served_folders(value: Any, names: list[str]) -> dict[str, str]:
    """``--conf models``: one folder (one bundle), or ``<model>=<folder>`` pairs, comma-separated."""
    if not value:
        return {}
    text = str(value)
    if "=" not in text:
        if len(names) > 1:
            raise OptionError("--conf models names one served folder; with several bundles give <model>=<folder>,...")
        return {names[0]: text}
    folders = dict(pair.split("=", 1) for pair in text.split(",") if pair.strip())
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise OptionError(f"--conf models names {unknown}, not models of this app {names}.")
    return {k.strip(): v.strip() for k, v in folders.items()}


def _train_options(value: Any) -> dict[str, dict[str, Any]]:
    """``--conf train_options``: a JSON object of model -> options, or a JSON file's path."""
    if not value:
        return {}
    text = str(value)
    if not text.lstrip().startswith("{"):
        with open(text) as f:
            text = f.read()
    try:
        options = json.loads(text)
    except ValueError as e:
        raise OptionError(f"--conf train_options is not a JSON object of model -> options ({e}).") from e
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise OptionError('--conf train_options must be {"<model>": {"<option>": value, ...}, ...}.')
    return options


class RDLabelApp(MONAILabelApp):
    """MONAI Label app over RD bundles: per bundle an infer task, a train task, an uncertainty scoring method and
    strategy; MONAI Label's ``random`` and ``first`` strategies; checked datastore, uploads and answers.

    Args:
        app_dir: the app folder (``apps/monailabel``).
        studies: the images folder (the local datastore).
        conf: ``--conf`` values; see the module docstring.

    Raises:
        OptionError: no ``bundle`` in ``conf``, one ``models`` folder for several bundles, a ``model_file`` other than
            ``model.pt``, a ``keep_runs`` below 1, ``train_options`` that are not per-model objects or name an
            unknown model.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        bundles = [b.strip() for b in str(conf.get("bundle", "")).split(",") if b.strip()]
        if not bundles:
            raise OptionError("--conf bundle <RD bundle folder> is required, e.g. --conf bundle bundles/rd_demo.")
        names = [os.path.basename(os.path.normpath(b)) for b in bundles]
        models = _served_folders(conf.get("models"), names)
        if conf.get("model_file"):
            check_model_file(conf["model_file"])
            if len(bundles) > 1:
                raise OptionError("--conf model_file names one model; give one bundle with it.")
            folder = os.path.dirname(conf["model_file"])
            if names[0] in models and os.path.abspath(folder) != os.path.abspath(models[names[0]]):
                raise OptionError(f"--conf model_file {conf['model_file']} is not in --conf models {models[names[0]]}.")
            models.setdefault(names[0], folder)
        self.bundles = {n: (os.path.abspath(b), models.get(n)) for n, b in zip(names, bundles)}
        self.keep_runs = as_int(conf.get("keep_runs", 3), "keep_runs", min_value=1)
        self.train_options = _train_options(conf.get("train_options"))
        unknown = sorted(set(self.train_options) - set(self.bundles))
        if unknown:
            raise OptionError(f"--conf train_options names {unknown}, not models of this app {sorted(self.bundles)}.")
        self.uploads = UploadFolder()
        roots = {"studies": studies, "uploads": self.uploads.path, "app": app_dir, "python": sys.prefix}
        for name, (root, served) in self.bundles.items():
            roots[f"bundle:{name}"] = root
            roots[f"models:{name}"] = ServedStudent(root, served).model_dir
        self.redactor = PathRedactor(roots)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_rd",
            description="Reprogramming Distillation students: class scores or label maps, trained on your labels",
            version="2",
        )

    # tasks ----------------------------------------------------------------------------------------------------

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return RDDatastore(
            self.studies,
            label_check=self.check_label,
            uploads=self.uploads,
            redactor=self.redactor,
            extensions=list(IMAGE_PATTERNS),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _load_sessions(self, load: bool = False) -> RDSessions | None:
        if not load:
            return None
        return RDSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY, uploads=self.uploads)

    def server_mode(self, mode: bool) -> None:
        """Set when the server starts: from then on the tasks' status answers are shown without server paths (the
        first line a task's subprocess prints, before this app is loaded there, names the app's folders)."""
        super().server_mode(mode)
        if mode:
            redact_task_status(self.redactor)

    def _is_segmentation(self, root: str) -> bool:
        return ServedStudent(root).task() == "segmentation"

    def init_infers(self) -> dict[str, Any]:
        return {
            name: (RDSegmentInferTask if self._is_segmentation(root) else RDClassifyInferTask)(root, models)
            for name, (root, models) in self.bundles.items()
        }

    def init_trainers(self) -> dict[str, Any]:
        return {
            name: (RDSegmentTrainTask if self._is_segmentation(root) else RDTrainTask)(
                root, models, self.conf, keep_runs=self.keep_runs, train_options=self.train_options.get(name)
            )
            for name, (root, models) in self.bundles.items()
        }

    def init_strategies(self) -> dict[str, Any]:
        return {
            "random": Random(),
            "first": First(),
            **{f"entropy_{name}": EntropyStrategy(name) for name in self.bundles},
        }

    def init_scoring_methods(self) -> dict[str, Any]:
        return {f"entropy_{name}": EntropyScoring(task) for name, task in self._infers.items()}

    def init_batch_infer(self) -> Callable:
        return RDBatchInferTask()

    # labels ---------------------------------------------------------------------------------------------------

    def check_label(self, image_file: str, label_file: str, info: dict[str, Any]) -> str | None:
        """The datastore's label check: a label map must fit a served segmentation model, a class label name a
        class of a served classification model.

        Args:
            image_file: the labelled image.
            label_file: the label file being saved.
            info: the label's info (the upload's ``params``).

        Returns:
            For a label map, a NIfTI file with the map on the image's grid (to store instead of the upload); for a
            class label None (the upload is stored as it is).

        Raises:
            DataCheckError: no served model can train on the label; the reason names each model's objection.
        """
        infers = getattr(self, "_infers", {})
        kind = RDSegmentInferTask if is_label_map(label_file) else RDClassifyInferTask
        tasks = {n: t for n, t in infers.items() if isinstance(t, kind)}
        if not tasks:
            what = "label map (segmentation)" if kind is RDSegmentInferTask else "class label"
            raise DataCheckError(f"no served model trains on a {what}: the models are {sorted(infers)}.")
        objections = []
        for name, task in tasks.items():
            names = task.student.class_names()
            try:
                if kind is RDSegmentInferTask:
                    conformed = conform_label_map(label_file, image_file, names, info.get("label_info"))
                    out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
                    nib.save(conformed, out)
                    return out
                value = read_class_label(info, label_file)
                values = value if isinstance(value, list) else [value]  # a multi-label model's classes
                if value is None or not values:
                    raise DataCheckError(
                        'the label has no class: save it with params {"label": "<class name>"} or as a JSON file '
                        '{"label": "<class name>"}.'
                    )
                for v in values:
                    class_index(v, names, "the label")
                return None
            except DataCheckError as e:
                objections.append(f"{name}: {e}")
        raise DataCheckError("; ".join(objections))

    # requests -------------------------------------------------------------------------------------------------

    def _model(self, model: Any) -> str:
        if model not in self._infers:
            raise http_error(404, f"model {model!r} is not served here; the models are {sorted(self._infers)}.")
        return model

    def _check_image(self, image: Any, datastore: Datastore | None) -> None:
        """An image to infer on: a datastore id, this request's upload or a session's image; nothing else."""
        if isinstance(image, str):
            if self.uploads.holds(image) or (self._sessions is not None and self._sessions.holds(image)):
                return
            store = datastore or self.datastore()
            if isinstance(store, RDDatastore):
                store.get_image_uri(image)  # 400 for a path, 404 for an unknown id
            return
        if not hasattr(image, "shape"):  # MONAI Label passes WSI regions as arrays; a client sends a string
            raise http_error(400, "image must be an image id of the datastore (GET /datastore/ lists them).")

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """``MONAILabelApp.infer`` on a checked request; the request's uploads are removed if it fails.

        Raises:
            HTTPException: 404 unknown model or image, 400 an image that is not an id, 409 no usable model, 422 an
                unreadable image or a bad option (see :mod:`monai_rd.label.http_errors`).
        """
        self.uploads.sweep()
        try:
            self._model(request.get("model"))
            self._check_image(request.get("image"), datastore)
            return super().infer(request, datastore)
        except Exception as e:
            self.uploads.discard(request.get("image"), request.get("label"))
            raise refusal(e, default=500, redact=self.redactor) from e

    def infer_wsi(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        try:
            self._model(request.get("model"))
            self._check_image(request.get("image"), datastore)
            return super().infer_wsi(request, datastore)
        except Exception as e:
            self.uploads.discard(request.get("image"))
            raise refusal(e, default=500, redact=self.redactor) from e

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """The strategy's next image (its id and score, never its path).

        Raises:
            HTTPException: 404 for an unknown strategy.
        """
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise http_error(
                404, f"strategy {strategy!r} is not offered; the strategies are {sorted(self._strategies)}."
            )
        try:
            result = super().next_sample(request)
        except Exception as e:
            raise refusal(e, default=500, redact=self.redactor) from e
        result.pop("path", None)
        return result

    def bundle_path(self, model: Any) -> None:
        """Called by MONAI Label before it starts a train, batch-inference or scoring task: an unknown model is
        refused here (404) rather than failing in the task's subprocess. No bundle folder is handed to the task's
        request (which clients read back)."""
        if model is not None:
            self._model(model)
        return None

    def _run_task(
        self, check: Callable[[], Any], method: Callable[..., Any], request: dict[str, Any], *args: Any
    ) -> Any:
        """``check()`` then ``method(request, *args)``; in a task's own subprocess (not server mode) everything it
        prints becomes the task's ``details``, which clients read: it is printed without server paths, and a
        failure ends the process with its reason instead of a traceback."""
        if self._server_mode:  # run_sync: inside the server, the answer is the HTTP status
            try:
                check()
                return method(request, *args)
            except Exception as e:
                raise refusal(e, default=500, redact=self.redactor) from e
        with redacted_output(self.redactor):
            try:
                check()
                return method(request, *args)
            except Exception as e:
                reason = refusal(e, default=500, redact=self.redactor).detail
        raise SystemExit(f"{request.get('model') or request.get('method')}: failed: {reason}")

    def train(self, request: dict[str, Any]) -> Any:
        return self._run_task(lambda: self._model(request.get("model")), super().train, request)

    def batch_infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> Any:
        return self._run_task(lambda: self._model(request.get("model")), super().batch_infer, request, datastore)

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> Any:
        def check() -> None:
            if request.get("method") not in self._scoring_methods:
                raise http_error(404, f"scoring method {request.get('method')!r} is not offered; they are "
                                      f"{sorted(self._scoring_methods)}.")

        return self._run_task(check, super().scoring, request, datastore)
