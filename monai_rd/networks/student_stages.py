"""A classification student's backbone cut into N stages for Deep Reprogramming Distillation (DRD).

DRD feeds a reprogrammed teacher map into the student's own later stages: ``forward_from(i, f)`` runs stages i+1..N
and the pooling on a map ``f`` of stage i's shape. The cut is found by walking the backbone's existing modules, so
nothing is created (no parameters, no random numbers) and the backbone's ``state_dict`` is unchanged. A
:class:`StageSplit` lists, per stage, the module paths the backbone's forward runs in order, plus its pooling, so
that running the stages then the pooling computes exactly what the backbone computes.

Families (checked by class, so an unknown backbone is refused by name rather than cut wrongly):

- torchvision ResNet, ResNeXt and Wide ResNet, RegNet, MobileNetV2/V3, ShuffleNetV2, EfficientNet, DenseNet,
  ConvNeXt: the modules of their forward, ``features`` expanded; stages are the last 4 resolutions
  (:func:`~monai_rd.networks.stages.stride_stage_ends`).
- timm CNNs: the modules before the head (``global_pool``/``head``/``fc``/``classifier``), with the stage ends of
  the model's ``feature_info``; the pooling is the model's ``forward_head``.
- MONAI ``ResNet`` and ``DenseNet`` (2D and 3D).

The last stage runs to the end of the backbone's feature part, so its map is the one the backbone pools (the map
feature KD hooks) and ``forward_from(N - 1, f)`` only pools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_rd.networks.stages import DEFAULT_NUM_STAGES, stride_stage_ends

__all__ = ["StageSplit", "split_backbone"]

# timm: the first of these top-level modules starts the head (forward_head); everything before is forward_features
_TIMM_HEAD = ("global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "flatten")


@dataclass(frozen=True)
class StageSplit:
    """A backbone as N stages and a pooling.

    Attributes:
        stages: per stage, the paths (relative to the backbone) of the modules its forward runs, in order.
        pool: ``pool(backbone, f)``: the backbone's computation after its last stage, ``f`` -> (B, F) or
            (B, F, 1, ...); it never changes ``f`` in place.
    """

    stages: tuple[tuple[str, ...], ...]
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]

    @property
    def names(self) -> tuple[str, ...]:
        """Each stage's name: the path of its last module (``layer1``, ``features.3``, ...)."""
        return tuple(s[-1] for s in self.stages)

    def run(self, backbone: nn.Module, k: int, f: torch.Tensor) -> torch.Tensor:
        """Stage ``k`` of ``backbone`` on ``f``."""
        for path in self.stages[k]:
            f = backbone.get_submodule(path)(f)
        return f


def _cut(backbone: nn.Module, body: Sequence[str], ends: Sequence[str] | None, num_stages: int) -> tuple:
    """Group ``body`` (module paths in forward order) into stages ending at ``ends`` (by stride when None)."""
    if ends is None:
        ends = stride_stage_ends([(p, backbone.get_submodule(p)) for p in body], num_stages)
    stages, start = [], 0
    for k, end in enumerate(ends):
        stop = len(body) if k == len(ends) - 1 else body.index(end) + 1  # the last stage runs to the pooling
        stages.append(tuple(body[start:stop]))
        start = stop
    return tuple(stages)


def _children(backbone: nn.Module, path: str) -> list[str]:
    return [f"{path}.{n}" for n, _ in backbone.get_submodule(path).named_children()]


def _expand_to(backbone: nn.Module, paths: Sequence[str], ends: Sequence[str]) -> list[str]:
    """Replace each path that holds one of ``ends`` below it by its children, recursively, keeping the order."""
    out: list[str] = []
    for path in paths:
        if any(e.startswith(path + ".") for e in ends):
            out += _expand_to(backbone, _children(backbone, path), ends)
        else:
            out.append(path)
    return out


def _flat_pool(pool: str, head: str) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    # torchvision: avgpool module -> flatten -> head (the classifier replaced by nn.Identity)
    def run(b: nn.Module, f: torch.Tensor) -> torch.Tensor:
        return b.get_submodule(head)(torch.flatten(b.get_submodule(pool)(f), 1))

    return run


def _torchvision_split(backbone: nn.Module, num_stages: int) -> tuple | None:
    import torchvision.models as tvm

    if isinstance(backbone, tvm.ResNet):
        body = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return _cut(backbone, body, None, num_stages), _flat_pool("avgpool", "fc")
    if isinstance(backbone, tvm.RegNet):
        body = ["stem"] + _children(backbone, "trunk_output")
        return _cut(backbone, body, None, num_stages), _flat_pool("avgpool", "fc")
    if isinstance(backbone, tvm.ShuffleNetV2):
        body = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
        return _cut(backbone, body, None, num_stages), lambda b, f: b.fc(f.mean([2, 3]))
    pools: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
        tvm.MobileNetV2: lambda b, f: b.classifier(torch.flatten(F.adaptive_avg_pool2d(f, (1, 1)), 1)),
        tvm.MobileNetV3: _flat_pool("avgpool", "classifier"),
        tvm.EfficientNet: _flat_pool("avgpool", "classifier"),
        # DenseNet's forward applies relu in place on the features: not in place here, f belongs to the caller
        tvm.DenseNet: lambda b, f: b.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(f), (1, 1)), 1)),
        tvm.ConvNeXt: lambda b, f: b.classifier(b.avgpool(f)),
    }
    for cls, pool in pools.items():
        if isinstance(backbone, cls):
            body = _children(backbone, "features")
            return _cut(backbone, body, None, num_stages), pool
    return None


def _monai_split(backbone: nn.Module, num_stages: int) -> tuple | None:
    from monai.networks.nets import DenseNet, ResNet

    if isinstance(backbone, ResNet):
        body = ["conv1", "bn1", "act"] + ([] if backbone.no_max_pool else ["maxpool"])
        body += ["layer1", "layer2", "layer3", "layer4"]

        def pool(b: nn.Module, f: torch.Tensor) -> torch.Tensor:
            x = b.avgpool(f)
            x = x.view(x.size(0), -1)
            return b.fc(x) if b.fc is not None else x

        return _cut(backbone, body, None, num_stages), pool
    if isinstance(backbone, DenseNet):
        body = _children(backbone, "features")

        def dense_pool(b: nn.Module, f: torch.Tensor) -> torch.Tensor:
            # class_layers starts with an in-place activation: run it on a copy, f belongs to the caller
            x = f
            for k, layer in enumerate(b.class_layers):
                x = layer(x.clone() if k == 0 and getattr(layer, "inplace", False) else x)
            return x

        return _cut(backbone, body, None, num_stages), dense_pool
    return None


def _timm_split(backbone: nn.Module, num_stages: int) -> tuple | None:
    info = getattr(backbone, "feature_info", None)
    if not info or not hasattr(backbone, "forward_head") or type(backbone).__module__.split(".")[0] != "timm":
        return None
    reductions = [f["reduction"] for f in info]
    if len(set(reductions)) == 1:
        raise ValueError(
            f"timm student {type(backbone).__name__} keeps one stride throughout (a transformer), so it has no "
            "stages for Deep RD; use a convolutional student."
        )
    children = [n for n, _ in backbone.named_children()]
    head = next((k for k, n in enumerate(children) if n in _TIMM_HEAD), len(children))
    ends = [str(f["module"]) for f in info][-num_stages:]
    body = _expand_to(backbone, children[:head], ends)
    missing = [e for e in ends if e not in body]
    if missing:
        raise ValueError(
            f"timm student {type(backbone).__name__}: its feature_info stages {missing} are not modules of its "
            "forward_features in order; it cannot be cut into Deep RD stages."
        )
    return _cut(backbone, body, ends, num_stages), lambda b, f: b.forward_head(f)


def split_backbone(backbone: nn.Module, num_stages: int = DEFAULT_NUM_STAGES) -> StageSplit:
    """Cut a classification backbone (its classifier replaced by ``nn.Identity``) into stages.

    Args:
        backbone: a backbone built by :func:`monai_rd.networks.create_backbone`.
        num_stages: N (fewer when the backbone has fewer resolutions).

    Returns:
        The split; running its stages then its pooling on x computes ``backbone(x)``.

    Raises:
        ValueError: a backbone of another family (e.g. a custom module, a ViT).
    """
    for split in (_torchvision_split, _monai_split, _timm_split):
        found = split(backbone, num_stages)
        if found is not None:
            return StageSplit(*found)
    raise ValueError(
        f"Deep RD cannot cut a {type(backbone).__module__}.{type(backbone).__name__} student into stages; supported: "
        "torchvision ResNet/RegNet/MobileNetV2/V3/ShuffleNetV2/EfficientNet/DenseNet/ConvNeXt, timm CNNs with "
        "feature_info, MONAI ResNet and DenseNet."
    )
