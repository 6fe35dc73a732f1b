"""Convert RGB(A)-stored images to one channel (many medical PNG/JPEG datasets store gray images as RGB)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["ToGrayscale", "ToGrayscaled"]

_LUMA = (0.299, 0.587, 0.114)


class ToGrayscale(Transform):
    """Channel-first image with 1, 3 or 4 channels -> 1 channel (ITU-R BT.601 luma; alpha dropped).

    Raises:
        ValueError: the image has another channel count (names the shape).
    """

    backend = ["torch"]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """
        Args:
            img: (C, *spatial) with C in {1, 3, 4}.

        Returns:
            (1, *spatial) tensor (MetaTensor metadata kept).
        """
        t = convert_to_tensor(img, track_meta=True)
        c = t.shape[0]
        if c == 1:
            return t
        if c not in (3, 4):
            raise ValueError(f"expected a channel-first image with 1, 3 or 4 channels, got shape {tuple(t.shape)}.")
        w = torch.tensor(_LUMA, dtype=torch.float32, device=t.device).view(3, *([1] * (t.ndim - 1)))
        return (t[:3].float() * w).sum(dim=0, keepdim=True)


class ToGrayscaled(MapTransform):
    """Dictionary version of :class:`ToGrayscale`.

    Args:
        keys: keys of the images to convert.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToGrayscale()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.converter(d[key])
            except ValueError as e:
                src = getattr(d[key], "meta", {}).get("filename_or_obj", "?")
                raise ValueError(f"{src}: {e}") from e
        return d
