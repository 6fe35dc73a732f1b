"""MONAI Label training of a Deep RD segmentation bundle on the label maps drawn in a client.

:class:`RDSegmentTrainTask` is :class:`~monai_rd.label.train_task.RDTrainTask` (the run through the bundle's own
``train.json``, ``train_stats``, the publish rule, the pruning) on segmentation labels: every image of the
datastore with a NIfTI label map under the request's ``label_tag`` (saved with ``PUT /datastore/label`` and
checked then: :mod:`monai_rd.label.mask_labels`) of the model's dimensions and classes, split at random with the
request's ``seed``, given to the recipe as its ``datalist`` (the teacher cache is built from exactly the training
images). The new model is scored and served like a classification one, by mean Dice of the served label maps
(:func:`~monai_rd.label.model_score.validation_score`).
"""

from __future__ import annotations

from typing import Any

from monai.data import partition_dataset
from monailabel.interfaces.datastore import Datastore

from monai_rd.label.mask_labels import mask_datalist
from monai_rd.label.segment_infer_task import RDSegmentInferTask
from monai_rd.label.train_task import RDTrainTask
from monai_rd.utils.options import as_int

__all__ = ["RDSegmentTrainTask"]


class RDSegmentTrainTask(RDTrainTask):
    """RD training of a segmentation bundle (``rd_brain_segment_2d``, ``rd_brain_segment``, ``rd_spleen_ct``) on
    the datastore's label maps. Request options and arguments: see :class:`~monai_rd.label.train_task.RDTrainTask`
    (no ``image_size``: the sliding window and grid come from the bundle or ``--conf train_options``)."""

    infer_task_class = RDSegmentInferTask
    min_labelled = 2  # 1 to train on, 1 to validate

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        return mask_datalist(datastore, tag=request.get("label_tag", "final"), spatial_dims=self.student.spatial_dims(),
                             num_classes=len(self.class_names()))

    def _partition_datalist(self, datalist: list[dict[str, Any]], request: dict[str, Any], shuffle: bool = False):
        """A seeded random split (MONAI's ``partition_dataset``) with at least one image on each side."""
        self._too_few(len(datalist))
        val_split = self._val_split(request)
        seed = as_int(request.get("seed", 0), "seed", min_value=0)
        train, val = partition_dataset(datalist, ratios=[1.0 - val_split, val_split], shuffle=True, seed=seed)
        if not val:
            val, train = train[-1:], train[:-1]
        if not train:
            train, val = val[:1], val[1:]
        self._split = {"training": train, "validation": val}
        return train, val

    def _batch_size(self, request: dict[str, Any]) -> int:
        bundle_batch = int(self._bundle_option("batch_size"))
        wanted = as_int(request.get("batch_size", bundle_batch), "batch_size", min_value=1)
        return max(1, min(wanted, len(self._split["training"])))

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides = super()._update_overrides(overrides)
        overrides.pop("datalist_splits", None)  # the segmentation recipe reads the three splits by name
        overrides.pop("image_size", None)
        overrides["datalist"] = {**self._split, "test": []}
        return overrides
