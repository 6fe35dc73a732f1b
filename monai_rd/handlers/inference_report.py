"""What an inference run did with each input: predicted, or skipped with the reason; a summary, and a failed run
when an input was skipped."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

from monai_rd.errors import SkippedInputsError

__all__ = ["InferenceReport"]

logger = logging.getLogger(__name__)
_SHOWN = 5


class InferenceReport:
    """Collect each input's status (set by :class:`monai_rd.transforms.input_status.ReadInputd` and
    :class:`~monai_rd.transforms.input_status.MarkNonFinited`) from an evaluator's batches.

    At the end of the run it logs how many inputs were predicted and which were skipped, and writes the skipped
    ones with their reason to ``skipped_csv`` (``image,status``; a classifier's ``predictions.csv`` has them as rows
    with empty scores instead). :meth:`finish` (the recipe's last ``run`` entry) then raises unless
    ``allow_skipped``, so a run that could not predict an input ends with a non-zero exit status.

    Args:
        written: what the run wrote, named in the summary (e.g. the predictions CSV or the output folder).
        skipped_csv: the CSV of skipped inputs, or None.
        allow_skipped: end normally even when inputs were skipped (``--allow_skipped true``).
        status_key: the status key of each item (``""``: read and predicted).
        path_key: the input path key of each item.

    Attributes:
        statuses: input path -> status, in the order the inputs were seen (filled during the run).
    """

    rank0_only = True  # writes a file: one process of a torchrun job does (see monai_rd.bundle.distributed)

    def __init__(
        self,
        written: str,
        skipped_csv: str | None = None,
        allow_skipped: Any = False,
        status_key: str = "status",
        path_key: str = "image_path",
    ) -> None:
        from monai_rd.utils.options import as_bool

        self.written = written
        self.skipped_csv = skipped_csv
        self.allow_skipped = as_bool(allow_skipped, "allow_skipped")
        self.status_key = status_key
        self.path_key = path_key
        self.statuses: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        """Collect statuses after every iteration and summarise at the end of the run."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.summarise)

    def reset(self, _engine: Engine | None = None) -> None:
        """Forget earlier statuses, and remove a ``skipped_csv`` an earlier run left (it would describe that run)."""
        self.statuses.clear()
        if self.skipped_csv and os.path.isfile(self.skipped_csv):
            os.remove(self.skipped_csv)

    def collect(self, engine: Engine) -> None:
        """Record the status of each input of the iteration's (decollated) batch."""
        batch = engine.state.batch
        for item in batch if isinstance(batch, Sequence) else [batch]:
            self.statuses[str(item[self.path_key])] = str(item.get(self.status_key) or "")

    @property
    def skipped(self) -> dict[str, str]:
        """The inputs not predicted, with their reason."""
        return {path: status for path, status in self.statuses.items() if status}

    def describe(self) -> str:
        """How many inputs were predicted, and which were skipped (the first few) with their reason."""
        skipped = self.skipped
        text = f"{len(self.statuses) - len(skipped)} of {len(self.statuses)} input(s) predicted ({self.written})"
        if not skipped:
            return text
        where = f"; listed with the reason in {self.skipped_csv}" if self.skipped_csv else ""
        shown = "; ".join(f"{p}: {s}" for p, s in list(skipped.items())[:_SHOWN])
        more = f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        return f"{text}; {len(skipped)} skipped{where}: {shown}{more}"

    def summarise(self, _engine: Engine | None = None) -> None:
        """Log :meth:`describe`; write ``skipped_csv`` when an input was skipped."""
        skipped = self.skipped
        if skipped and self.skipped_csv:
            os.makedirs(os.path.dirname(os.path.abspath(self.skipped_csv)), exist_ok=True)
            with open(self.skipped_csv, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "status"])
                writer.writerows(skipped.items())
        (logger.warning if skipped else logger.info)(self.describe() + ".")

    def finish(self) -> None:
        """End the run: raise when an input was skipped, unless ``allow_skipped``.

        Raises:
            SkippedInputsError: naming the skipped inputs (the first few), why, and what to do.
        """
        if self.skipped and not self.allow_skipped:
            raise SkippedInputsError(
                f"{self.describe()}. Fix or remove those files (or pass --allow_skipped true to end normally when "
                "some inputs cannot be predicted)."
            )
