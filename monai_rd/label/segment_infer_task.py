"""MONAI Label segmentation inference with a Deep RD bundle's deployed student (UNet + shared head).

:class:`RDSegmentInferTask` answers with a label map on the input volume's own grid, exactly as
``python -m monai.bundle run --config_file <bundle>/configs/inference.json`` writes it: the bundle's
preprocessing (orientation, spacing, intensity window), its sliding-window inferer with the ``roi_size`` the model
was trained with, and its postprocessing (softmax inverted onto the input grid, argmax), without the bundle's
file saver: the task writes the label file it returns with the same NIfTI writer, so a 2D map too carries the
input's affine (MONAI Label's own writer gives a 2D map a 1 mm identity grid).

Its ``type`` and ``labels`` are what 3D Slicer's MONAI Label module lists and draws with: ``segmentation`` and
``{class name: value}`` without the background, the values being the label map's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from monai.data import NibabelWriter
from monai.inferers import Inferer
from monai.transforms import SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType

from monai_rd.errors import CheckpointMismatchError
from monai_rd.label.infer_task import RDInferTask

__all__ = ["RDSegmentInferTask"]


class RDSegmentInferTask(RDInferTask):
    """A label map (NIfTI, uint8, background 0) of one volume from ``<model_dir>/model.pt``.

    The reply is the label file and, in its JSON, ``label_names`` (class name -> value, background excluded),
    ``class_names`` (every channel, background first), ``model`` (the model's name) and ``model_sha256`` (of the
    ``model.pt`` that answered). Arguments: see
    :class:`~monai_rd.label.infer_task.RDInferTask` (``bundle_root``: a Deep RD segmentation bundle, e.g.
    ``bundles/rd_spleen_ct``).
    """

    infer_type = InferType.SEGMENTATION
    answer = "label map"

    def label_map(self, class_names: Sequence[str]) -> dict[str, int]:
        """MONAI Label's label name -> value map: the classes after the background (channel 0)."""
        return {name: i for i, name in enumerate(class_names) if i > 0}

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """The bundle's preprocessing, with MONAI Label's ``image_path`` set aside meanwhile: MONAI's ``Spacingd``
        updates every ``image_*`` key of a NIfTI image as a metadata dict, and fails on that string."""
        path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if path is not None:
            data["image_path"] = path
        return data

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        """The bundle's sliding window (``roi_size`` from the trained model's ``model_meta.json``)."""
        device = data.get("device", "cpu") if data else "cpu"
        inferer = self.student.load(device)["inferer"]
        if inferer is None:
            raise CheckpointMismatchError(
                f"{self.student.config_file} has no inferer: it is not a segmentation bundle."
            )
        return inferer

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's postprocessing without its file saver, then the channel dropped for MONAI Label's writer."""
        device = data.get("device", "cpu") if data else "cpu"
        post = [t for t in self.student.load(device)["postprocessing"].transforms if not isinstance(t, SaveImaged)]
        return [*post, SqueezeDimd(keys=self.output_label_key, dim=0)]

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        """The label map as a NIfTI file (also for a DICOM input, whose path has no extension) on the input's grid
        (the affine the bundle's postprocessing restored, as ``inference.json``'s ``SaveImaged`` writes it)."""
        loaded = self.student.load(data.get("device", "cpu"))
        names = loaded["spec"]["class_names"]
        self.labels = self.label_map(names)  # a newly published model may have other classes
        pred = data[self.output_label_key]
        writer = NibabelWriter(output_dtype=np.uint8)
        writer.set_data_array(pred, channel_dim=None)
        writer.set_metadata(dict(pred.meta), resample=False)
        label_file = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        writer.write(label_file)
        result = {"label_names": self.labels, "class_names": list(names), "model": self.name,
                  "model_sha256": loaded["sha256"]}
        return label_file, result
