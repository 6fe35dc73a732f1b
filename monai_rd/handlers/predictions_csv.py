"""A ``CSVSaver`` whose CSV names its columns: the image, each class's probability, and the predicted label; an input
that was not predicted (unreadable, or not finite) gets no row, never a class."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.data import CSVSaver

__all__ = ["PredictionsCSVSaver"]


class PredictionsCSVSaver(CSVSaver):
    """Writes ``image,<class 1>,...,<class C>,predicted`` rows (with that header) for ``ClassificationSaver``.

    ``predicted`` is the most probable class for single-label models, and the ``;``-joined classes with a
    probability at or above ``threshold`` for multi-label ones. An input whose status in ``statuses`` is not empty
    (see :class:`monai_rd.handlers.InferenceReport`, which lists it in ``skipped.csv``), or whose probabilities are
    not finite, gets no row: no class is ever written for an input the model could not score.

    Args:
        class_names: the model's classes, in output order.
        multi_label: outputs are independent per-class probabilities (sigmoid), not one softmax.
        threshold: the multi-label decision threshold.
        output_dir: folder of the CSV.
        filename: name of the CSV.
        statuses: input path -> status (``""``: predicted), filled while the run goes (``InferenceReport.statuses``).

    Raises:
        ValueError: a saved row's length differs from the number of classes (names the file).
    """

    rank0_only = True  # writes files: one process of a torchrun job does (see monai_rd.bundle.distributed)

    def __init__(
        self,
        class_names: Sequence[str],
        multi_label: bool = False,
        threshold: float = 0.5,
        output_dir: str = "./",
        filename: str = "predictions.csv",
        statuses: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(output_dir=output_dir, filename=filename, overwrite=True)
        self.class_names = [str(c) for c in class_names]
        self.multi_label = multi_label
        self.threshold = threshold
        self.statuses = statuses if statuses is not None else {}

    def finalize(self) -> None:
        """Write the header and the cached rows (one file per run, replaced atomically)."""
        os.makedirs(self.output_dir, exist_ok=True)
        tmp = f"{self._filepath}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter=self.delimiter)
            writer.writerow(["image", *self.class_names, "predicted"])
            for name, probs in self._cache_dict.items():
                p = probs.flatten()
                if self.statuses.get(name) or not np.isfinite(p).all():
                    continue
                if p.size != len(self.class_names):
                    raise ValueError(
                        f"the prediction for {name} has {p.size} values but {len(self.class_names)} class names "
                        "were given; check --class_names."
                    )
                if self.multi_label:
                    label = ";".join(c for c, v in zip(self.class_names, p) if v >= self.threshold)
                else:
                    label = self.class_names[int(p.argmax())]
                writer.writerow([name, *(f"{v:.6g}" for v in p), label])
        os.replace(tmp, self._filepath)
        self.reset_cache()
