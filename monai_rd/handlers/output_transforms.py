"""``output_transform`` callables that adapt MONAI engine outputs to handlers and ignite metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.handlers import from_engine

__all__ = ["loss_terms_from_engine", "stacked_from_engine"]


def _plain(x: Any) -> torch.Tensor:
    # metrics hold plain CPU tensors: MetaTensor would carry metadata into the metrics JSON, and ignite metrics
    # keep their state on the CPU, so pred and label must meet there whatever device the engine ran on
    t = torch.as_tensor(x)
    return (t.as_tensor() if isinstance(t, MetaTensor) else t).detach().cpu()


def loss_terms_from_engine(keys: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """For ``StatsHandler``: a dict of scalar loss terms, so each term is logged under its own name.

    Args:
        keys: output keys, e.g. ``["loss", "ce_student", "ce_teacher", "kd", "cka"]``.

    Returns:
        Callable mapping ``engine.state.output`` (decollated or not) to ``{key: float}``.
    """
    getter = from_engine(list(keys), first=True)

    def _transform(output: Any) -> dict[str, float]:
        values = getter(output)
        return {k: float(torch.as_tensor(v).float().mean()) for k, v in zip(keys, values)}

    return _transform


def stacked_from_engine(
    keys: Sequence[str] = ("pred", "label"), onehot_label: int | None = None
) -> Callable[[Any], tuple[torch.Tensor, ...]]:
    """For ignite metrics on decollated MONAI outputs: stack per-item tensors back into batches.

    Args:
        keys: the prediction and label keys.
        onehot_label: convert class-index labels (B,) to one-hot (B, C) with this many classes (for
            ``monai.handlers.ROCAUC``); None keeps indices (for ``ignite.metrics.Accuracy``/``ConfusionMatrix``).

    Returns:
        Callable mapping ``engine.state.output`` to ``(pred (B, C), label (B,) or (B, C))``.
    """
    getter = from_engine(list(keys))

    def _transform(output: Any) -> tuple[torch.Tensor, ...]:
        pred, label = (
            _plain(torch.stack([_plain(i) for i in v]) if isinstance(v, list) else _plain(v)) for v in getter(output)
        )
        pred = pred.reshape(pred.shape[0], -1).float()
        if label.ndim > 1 and label.shape[1:].numel() == 1:
            label = label.reshape(-1)
        if onehot_label is not None and label.ndim == 1:
            label = torch.nn.functional.one_hot(label.long(), onehot_label)
        elif label.ndim == 1:
            label = label.long()
        return pred, label

    return _transform
