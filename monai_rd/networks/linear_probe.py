"""Linear probe of a frozen teacher: the teacher's ceiling as a linear classifier, and the logits KD distils."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LinearProbe", "TeacherLinearProbe", "fit_teacher_probe", "pooled_teacher_features"]

logger = logging.getLogger(__name__)

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2) if x.ndim > 2 else x


class LinearProbe(nn.Module):
    """A linear classifier on globally average-pooled features, fitted as L2-regularised logistic regression.

    The standard linear-probe protocol (as in CLIP's and DINOv2's evaluations): the features are standardised,
    the multinomial (or, multi-label, per-class binary) logistic regression is solved to convergence by
    full-batch L-BFGS in float64 from zero weights for each candidate weight decay, and the weight decay with the
    lowest validation log-loss is kept. The standardisation is folded into the one ``nn.Linear``, so the fitted
    probe is ``linear(mean_spatial(features))``. The problem is convex and the start is fixed, so a fit is
    deterministic and consumes no random numbers (building the probe does not either).

    Args:
        in_features: feature channels C.
        num_classes: outputs.
        multi_label: fit per-class sigmoids (BCE) instead of one softmax (CE).

    Attributes:
        fit_report: after :meth:`fit`, the chosen weight decay and each candidate's validation log-loss.
    """

    def __init__(self, in_features: int, num_classes: int, multi_label: bool = False) -> None:
        super().__init__()
        self.linear = torch.nn.utils.skip_init(nn.Linear, in_features, num_classes)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.multi_label = multi_label
        self.fit_report: dict[str, Any] = {}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (B, C, *spatial) maps (average-pooled here) or (B, C) vectors.

        Returns:
            Logits (B, num_classes).
        """
        return self.linear(_pooled(features).to(self.linear.weight.dtype))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels.long())

    def _solve(self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, max_iter: int) -> nn.Linear:
        linear = torch.nn.utils.skip_init(nn.Linear, x.shape[1], self.linear.out_features, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.zero_()
        opt = torch.optim.LBFGS(
            linear.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self._loss(linear(x), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return linear

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        val_features: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        weight_decays: Sequence[float] = WEIGHT_DECAYS,
        max_iter: int = 500,
    ) -> LinearProbe:
        """Fit the probe.

        Args:
            features: training features (N, C, *spatial) or (N, C).
            labels: (N,) class indices, or (N, num_classes) multi-hot.
            val_features: validation features, to choose the weight decay.
            val_labels: validation labels.
            weight_decays: candidate L2 weights (on the standardised features' weights).
            max_iter: L-BFGS iterations per candidate.

        Returns:
            self, fitted, with :attr:`fit_report`.

        Raises:
            ValueError: shapes that do not fit, or several weight decays and no validation data to choose.
        """
        x = _pooled(torch.as_tensor(features)).double().cpu()
        y = torch.as_tensor(labels).cpu()
        if x.ndim != 2 or x.shape[1] != self.linear.in_features or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"LinearProbe.fit expects {self.linear.in_features}-channel features for each label; got features "
                f"{tuple(torch.as_tensor(features).shape)} and labels {tuple(y.shape)}."
            )
        if len(weight_decays) > 1 and (val_features is None or val_labels is None):
            raise ValueError("pass val_features and val_labels to choose among several weight_decays, or give one.")
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # a constant channel gets weight 0 from the L2 term
        xs = (x - mean) / std
        best: tuple[float, float, nn.Linear] | None = None
        report: dict[str, Any] = {"val_log_loss": {}}
        for wd in weight_decays:
            linear = self._solve(xs, y, float(wd), max_iter)
            if len(weight_decays) == 1:
                best = (0.0, float(wd), linear)
                break
            xv = (_pooled(torch.as_tensor(val_features)).double().cpu() - mean) / std
            with torch.no_grad():
                val_loss = float(self._loss(linear(xv), torch.as_tensor(val_labels).cpu()))
            report["val_log_loss"][float(wd)] = val_loss
            if best is None or val_loss < best[0]:
                best = (val_loss, float(wd), linear)
        assert best is not None
        _, wd, linear = best
        with torch.no_grad():  # fold the standardisation: W (x - m) / s + b = (W / s) x + (b - (W / s) m)
            w = linear.weight / std
            self.linear.weight.copy_(w.to(self.linear.weight.dtype))
            self.linear.bias.copy_((linear.bias - w @ mean).to(self.linear.bias.dtype))
        report["weight_decay"] = wd
        self.fit_report = report
        return self


def pooled_teacher_features(
    teacher: nn.Module,
    items: Sequence[Mapping],
    transform: Callable[[Mapping], Mapping],
    cache: Any | None = None,
    image_key: str = "image",
    label_key: str = "label",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Globally pooled teacher features and labels of datalist items.

    Items a built :class:`~monai_rd.data.TeacherFeatureCache` holds are served from it (view 0, the
    un-augmented image); the others go through ``transform`` and the teacher, without gradients.

    Args:
        teacher: the frozen teacher (or None when the cache holds every item).
        items: datalist items with ``image_key`` and ``label_key``.
        transform: deterministic transform of an item to the teacher's input (the bundle's base transforms).
        cache: an optional built feature cache.
        image_key: key of the image path.
        label_key: key of the label.
        batch_size: teacher batch size.
        device: device to run the teacher on.

    Returns:
        ``(features (N, C_T) float32 on the CPU, labels (N,) or (N, C))``.

    Raises:
        ValueError: no items, or an item the cache lacks and no teacher.
    """
    if not items:
        raise ValueError("no items to compute teacher features for.")
    feats: list[torch.Tensor | None] = [None] * len(items)
    todo = []
    for i, item in enumerate(items):
        if cache is not None and len(cache) and item[image_key] in cache:
            feats[i] = _pooled(cache.gather([cache.index(item[image_key])], "cpu"))[0]
        else:
            todo.append(i)
    if todo:
        if teacher is None:
            raise ValueError(f"{len(todo)} item(s) are not in the feature cache and there is no teacher to run.")
        teacher = teacher.to(device).eval()
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            x = torch.stack([torch.as_tensor(transform(dict(items[i]))[image_key]) for i in rows]).float()
            with torch.no_grad():
                out = _pooled(teacher(x.to(device))).float().cpu()
            for i, f in zip(rows, out):
                feats[i] = f
    labels = torch.as_tensor([it[label_key] for it in items])
    return torch.stack(feats).float(), labels  # type: ignore[arg-type]


def fit_teacher_probe(
    probe: LinearProbe,
    teacher: nn.Module,
    datalist: Mapping[str, Sequence[Mapping]],
    transform: Callable[[Mapping], Mapping],
    cache: Any | None = None,
    device: str | torch.device = "cpu",
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
) -> LinearProbe:
    """Fit ``probe`` on the teacher's pooled features of ``datalist['training']``, choosing its weight decay on
    ``datalist['validation']``; the test split is never read.

    Args:
        probe: the probe to fit in place.
        teacher: the frozen teacher.
        datalist: with ``training`` and ``validation`` lists of items.
        transform: deterministic item -> teacher input transform.
        cache: the built training feature cache, if any.
        device: device to run the teacher on.
        weight_decays: candidates (see :meth:`LinearProbe.fit`).

    Returns:
        The fitted probe.
    """
    x, y = pooled_teacher_features(teacher, datalist["training"], transform, cache=cache, device=device)
    xv, yv = pooled_teacher_features(teacher, datalist["validation"], transform, device=device)
    probe.fit(x, y, xv, yv, weight_decays=weight_decays)
    losses = ", ".join(f"{k:g}: {v:.4f}" for k, v in probe.fit_report["val_log_loss"].items())
    logger.info(
        f"teacher linear probe fitted on {len(x)} training images: weight decay "
        f"{probe.fit_report['weight_decay']:g} chosen on {len(xv)} validation images (log-loss {losses})"
    )
    return probe


class TeacherLinearProbe(nn.Module):
    """The frozen teacher followed by its linear probe, as one classifier: what deploying the teacher gives.

    ``forward_features`` runs the teacher without gradients and pools its output; ``classify`` is the probe.
    The teacher is a submodule (it moves with ``.to()`` and counts in ``parameters()``, which is what deploying
    it costs) but is kept out of ``state_dict()`` and not expected by ``load_state_dict()``: a checkpoint
    holds only the probe, and the teacher comes from its own weights, as everywhere in monai_rd.

    Args:
        teacher: the frozen teacher (stays in eval mode).
        probe: a :class:`LinearProbe` over the teacher's channels.
    """

    def __init__(self, teacher: nn.Module, probe: LinearProbe) -> None:
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()
        self.probe = probe
        self.num_features = probe.linear.in_features
        self.num_classes = probe.linear.out_features
        self.register_state_dict_post_hook(_drop_teacher_keys)
        self.register_load_state_dict_post_hook(_teacher_keys_not_missing)

    def checkpointed_teacher_key(self, key: str) -> bool:
        """Whether the teacher's state entry ``key`` (relative to the teacher) goes into this model's checkpoint.

        None does here: the teacher comes from its own weights. A subclass that adapts the teacher saves what it
        changed (:class:`~monai_rd.networks.AdaptedTeacherClassifier`).
        """
        return False

    def train(self, mode: bool = True) -> TeacherLinearProbe:
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics and dropout never change
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled teacher features (B, C_T)."""
        with torch.no_grad():
            return _pooled(self.teacher(x)).float()

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """The probe on pooled features: (B, C_T) -> (B, num_classes)."""
        return self.probe(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images (B, in_channels, *spatial) as the bundle prepares them (the teacher resizes them).

        Returns:
            Logits (B, num_classes).
        """
        return self.classify(self.forward_features(x))


def _drop_teacher_keys(module: TeacherLinearProbe, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    start = prefix + "teacher."
    for key in [k for k in state_dict if k.startswith(start)]:
        if not module.checkpointed_teacher_key(key[len(start) :]):
            del state_dict[key]


def _teacher_keys_not_missing(module: TeacherLinearProbe, incompatible_keys: Any) -> None:
    def expected(key: str) -> bool:
        head, sep, rest = key.partition("teacher.")  # the key relative to the teacher, wherever this model sits
        if not sep or (head and not head.endswith(".")):
            return True
        return module.checkpointed_teacher_key(rest)

    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if expected(k)]
