"""A MONAI Label app that serves and trains the deployed students of RD bundles.

``apps/monailabel/main.py`` exposes :class:`RDLabelApp`; start it with::

    monailabel start_server --app apps/monailabel --studies <folder of images> --conf bundle bundles/rd_demo

``--conf`` values (strings, as MONAI Label passes them):

- ``bundle``: one or more RD bundle folders, comma-separated (required). Each gives a model named after its
  folder (``rd_demo``): for a classification bundle an infer task
  (:class:`~monai_rd.label.infer_task.RDClassifyInferTask`) and a train task
  (:class:`~monai_rd.label.train_task.RDTrainTask`) of the same name; for a segmentation bundle (its
  ``metadata.json`` declares a ``segmentation`` output, e.g. ``rd_spleen_ct``) an infer task
  (:class:`~monai_rd.label.segment_infer_task.RDSegmentInferTask`) only.
- ``models``: the served models folder, for one bundle only (default ``<bundle>/models``); a training started
  from MONAI Label publishes its ``model.pt`` there.
- ``model_file``: refused unless it is ``<models>/model.pt``: only the deployed student is served.

The local datastore lists PNG/JPEG/TIFF/BMP, DICOM (``.dcm``) and NIfTI files; a class label is saved with
``PUT /datastore/label`` and params ``{"label": "<class name>"}`` (see :mod:`monai_rd.label.class_labels`).
"""

from __future__ import annotations

import os
from typing import Any

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore

from monai_rd.errors import OptionError
from monai_rd.label.infer_task import RDClassifyInferTask
from monai_rd.label.segment_infer_task import RDSegmentInferTask
from monai_rd.label.served_model import ServedStudent, check_model_file
from monai_rd.label.train_task import RDTrainTask

__all__ = ["IMAGE_PATTERNS", "RDLabelApp"]

# what LoadImage2D reads (monai_rd.data.IMAGE_EXTENSIONS), as datastore patterns
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff", "*.dcm", "*.nii", "*.nii.gz")


class RDLabelApp(MONAILabelApp):
    """MONAI Label app over RD bundles: classification infer and train tasks, or a segmentation infer task, per
    bundle.

    Args:
        app_dir: the app folder (``apps/monailabel``).
        studies: the images folder (the local datastore).
        conf: ``--conf`` values; see the module docstring.

    Raises:
        OptionError: no ``bundle`` in ``conf``, ``models`` with several bundles, or a ``model_file`` other than
            ``model.pt``.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        bundles = [b.strip() for b in str(conf.get("bundle", "")).split(",") if b.strip()]
        if not bundles:
            raise OptionError("--conf bundle <RD bundle folder> is required, e.g. --conf bundle bundles/rd_demo.")
        models = conf.get("models")
        if models and len(bundles) > 1:
            raise OptionError("--conf models names one served folder; give one bundle with it.")
        if conf.get("model_file"):
            check_model_file(conf["model_file"])
            if models and os.path.abspath(os.path.dirname(conf["model_file"])) != os.path.abspath(models):
                raise OptionError(f"--conf model_file {conf['model_file']} is not in --conf models {models}.")
            models = models or os.path.dirname(conf["model_file"])
        self.bundles = {os.path.basename(os.path.normpath(b)): (os.path.abspath(b), models) for b in bundles}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_rd",
            description="Reprogramming Distillation students: class scores and training on labelled images, label maps",
            version="1",
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(
            self.studies,
            extensions=list(IMAGE_PATTERNS),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _task(self, root: str) -> str:
        return ServedStudent(root).task()

    def init_infers(self) -> dict[str, Any]:
        tasks = {"classification": RDClassifyInferTask, "segmentation": RDSegmentInferTask}
        return {name: tasks[self._task(root)](root, models) for name, (root, models) in self.bundles.items()}

    def init_trainers(self) -> dict[str, Any]:
        # training from MONAI Label is built for class labels; segmentation models are served only
        return {
            name: RDTrainTask(root, models, self.conf)
            for name, (root, models) in self.bundles.items()
            if self._task(root) == "classification"
        }

    def init_scoring_methods(self) -> dict[str, Any]:
        return {}  # MONAI Label's scorers compare masks
