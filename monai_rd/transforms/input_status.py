"""Inference that reads each input on its own: an input that cannot be read, or whose pixels or outputs are not
finite, is kept with a ``status`` saying why, and the others are predicted.

MONAI's ``Dataset`` and ``DataLoader`` stop the whole run at the first input whose transform raises (one truncated
PNG among a thousand: no predictions at all, and the file is not named), and a NaN pixel flows through to NaN
logits that ``argmax`` turns into class 0. The inference recipes therefore wrap their pieces:

- :class:`ReadInputd` runs the preprocessing of one input in its own ``try``; an input that raises, or whose
  preprocessed image holds NaN or infinity, is replaced by a zero placeholder of the network's input shape (so a
  batch stays whole) with its reason in ``status`` (``""`` for an input read well) and its path in ``image_path``;
- :class:`MarkNonFinited` (the evaluator's first postprocessing step) gives an input whose output is not finite its
  status;
- :class:`SkipFailedd` applies the bundle's postprocessing (inversion, saving a label map) only to inputs whose
  status is empty, so nothing is written for a skipped input.

:class:`monai_rd.handlers.InferenceReport` collects the statuses, summarises them and fails the run when an input
was skipped (listing it in ``skipped.csv``); :class:`monai_rd.handlers.PredictionsCSVSaver` gives it no row.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from monai_rd.data.checks import describe_error

__all__ = ["IMAGE_PATH_KEY", "STATUS_KEY", "MarkNonFinited", "ReadInputd", "SkipFailedd"]

STATUS_KEY = "status"
IMAGE_PATH_KEY = "image_path"
NON_FINITE_INPUT = "not predicted: the image has NaN or infinite values after preprocessing (a corrupt or float file?)"
NON_FINITE_OUTPUT = "not predicted: the model's output is NaN or infinite for this image"


def _finite(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or bool(torch.isfinite(value).all())


class ReadInputd(MapTransform):
    """Run ``transform`` (the preprocessing, loading included) on one input; never raise for a bad input.

    Args:
        keys: the image key(s); the first one's path is recorded as ``image_path``.
        transform: the preprocessing of one item (e.g. a ``Compose`` starting with ``LoadImaged``).
        placeholder_shape: the network input's shape without the batch dimension, ``(C, *spatial)``: a skipped
            input's image is zeros of this shape (so a batch of good and skipped inputs stacks).
        status_key: where the reason goes (``""`` when the input was read well).
        path_key: where the input's path (as listed) goes.
        track_meta: keep a good input's image a ``MetaTensor`` (for inverting the preprocessing); False makes it a
            plain tensor like the placeholder, so a batch of several inputs collates (MONAI collates the metadata of
            ``MetaTensor`` items key by key, which a placeholder does not have).

    Returns (when called):
        The preprocessed item, or ``{**item, <keys>: zeros, status: reason}`` for an input that raised or is not
        finite (reason: the error's type and first line, which names the file for most readers).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable[[Mapping[Hashable, Any]], Mapping[Hashable, Any]],
        placeholder_shape: Sequence[int],
        status_key: str = STATUS_KEY,
        path_key: str = IMAGE_PATH_KEY,
        track_meta: bool = True,
    ) -> None:
        super().__init__(keys)
        self.transform = transform
        self.track_meta = track_meta
        self.placeholder_shape = tuple(int(s) for s in placeholder_shape)
        self.status_key = status_key
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        path = str(item[self.first_key(item)])
        try:
            out = dict(self.transform(dict(item)))
        except Exception as e:  # any failure to read or preprocess is this input's, reported in its status
            status = f"not read: {describe_error(e)}"
        else:
            if all(_finite(out[k]) for k in self.key_iterator(out)):
                if not self.track_meta:
                    out.update({k: convert_to_tensor(out[k], track_meta=False) for k in self.key_iterator(out)})
                return {**out, self.status_key: "", self.path_key: path}
            status = NON_FINITE_INPUT
        zeros = {k: torch.zeros(self.placeholder_shape) for k in self.key_iterator(item)}
        return {**item, **zeros, self.status_key: status, self.path_key: path}


class MarkNonFinited(MapTransform):
    """Give an input whose output (``keys``, e.g. ``pred``) holds NaN or infinity a status, unless it has one.

    Args:
        keys: the output key(s) to check.
        status_key: the status key (see :class:`ReadInputd`).
    """

    def __init__(self, keys: KeysCollection, status_key: str = STATUS_KEY) -> None:
        super().__init__(keys)
        self.status_key = status_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not d.get(self.status_key) and not all(_finite(d[k]) for k in self.key_iterator(d)):
            d[self.status_key] = NON_FINITE_OUTPUT
        return d


class SkipFailedd(Transform):
    """Apply ``transform`` to an input whose status is empty; return a skipped input unchanged.

    Args:
        transform: e.g. the postprocessing that inverts the preprocessing and saves the label map.
        status_key: the status key (see :class:`ReadInputd`).
    """

    def __init__(self, transform: Callable[[Mapping[Hashable, Any]], Any], status_key: str = STATUS_KEY) -> None:
        self.transform = transform
        self.status_key = status_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        return data if data.get(self.status_key) else self.transform(data)
