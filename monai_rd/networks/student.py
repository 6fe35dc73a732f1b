"""The deployable student: a backbone returning pooled features plus the shared linear classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_rd.networks.stages import dry_run_stage_shapes, stage_index
from monai_rd.networks.student_stages import StageSplit, split_backbone

__all__ = ["StudentClassifier", "create_backbone", "list_students"]


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Change the first convolution to ``in_channels`` inputs, adapting its RGB weights as timm does
    (summed for one channel, tiled and rescaled otherwise)."""
    from timm.models import adapt_input_conv

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            conv = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                module.stride,  # type: ignore[arg-type]
                module.padding,  # type: ignore[arg-type]
                module.dilation,  # type: ignore[arg-type]
                module.groups,
                module.bias is not None,
            )
            conv.weight.data.copy_(adapt_input_conv(in_channels, module.weight.detach()))
            if module.bias is not None:
                conv.bias.data.copy_(module.bias.detach())  # type: ignore[union-attr]
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], conv)
            return
    raise ValueError("no 2D convolution found to adapt to the input channels.")


def _torchvision(arch: str, head_attr: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(pretrained: bool = False, in_channels: int = 3, **kwargs) -> tuple[nn.Module, int]:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        model = getattr(torchvision.models, arch)(weights=weights, **kwargs)
        head = getattr(model, head_attr)
        # the whole head is dropped, so the features are the input of its first linear layer (MobileNetV3 and VGG
        # have hidden layers in their classifier)
        linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
        num_features = linear.in_features
        setattr(model, head_attr, nn.Identity())
        if in_channels != 3:
            _adapt_first_conv(model, in_channels)
        return model, num_features

    return build


# the paper's three students, by the names users know them by
_STUDENTS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet18": _torchvision("resnet18", "fc"),
    "resnet34": _torchvision("resnet34", "fc"),
    "resnet50": _torchvision("resnet50", "fc"),
    "mobilenetv2": _torchvision("mobilenet_v2", "classifier"),
    "mobilenet_v2": _torchvision("mobilenet_v2", "classifier"),
    "mobilenetv3_small": _torchvision("mobilenet_v3_small", "classifier"),
    "shufflenetv2": _torchvision("shufflenet_v2_x1_0", "fc"),
    "shufflenet_v2_x1_0": _torchvision("shufflenet_v2_x1_0", "fc"),
    "shufflenet_v2_x0_5": _torchvision("shufflenet_v2_x0_5", "fc"),
}


def list_students() -> list[str]:
    """Names accepted by :func:`create_backbone` (besides ``timm:``, ``torchvision:`` and ``monai:`` prefixes)."""
    return sorted(_STUDENTS)


def create_backbone(
    name: str, pretrained: bool = False, in_channels: int = 3, spatial_dims: int = 2, **kwargs
) -> tuple[nn.Module, int]:
    """Build a feature backbone by name.

    Names: ``resnet18``, ``mobilenetv2``, ``shufflenetv2`` and the others in :func:`list_students`
    (torchvision); ``timm:<model>`` (any timm model, built with ``num_classes=0``); ``torchvision:<model>``;
    ``monai:resnet10``, ``monai:resnet18``, ... and ``monai:densenet121``, ... (MONAI's ResNets and DenseNets
    without their classifier, 2D or 3D with ``spatial_dims=3``: the 3D classification students).

    Args:
        name: the backbone's name.
        pretrained: load the library's ImageNet weights (downloads unless cached).
        in_channels: input channels; the first convolution is adapted when it differs from 3.
        spatial_dims: 2 or 3, used by ``monai:`` backbones.
        kwargs: passed to the library's constructor (e.g. ``block_config`` or ``init_features`` of a DenseNet).

    Returns:
        ``(backbone, num_features)``: the module returns pooled features (B, num_features).

    Raises:
        ValueError: an unknown name.
    """
    if name in _STUDENTS:
        return _STUDENTS[name](pretrained=pretrained, in_channels=in_channels, **kwargs)
    prefix, _, arch = name.partition(":")
    if prefix == "timm" and arch:
        import timm

        model = timm.create_model(arch, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs)
        # a head with a hidden layer (MobileNetV3's conv_head) pools to head_hidden_size, not num_features
        return model, int(getattr(model, "head_hidden_size", None) or model.num_features)
    if prefix == "torchvision" and arch:
        import torchvision

        probe = getattr(torchvision.models, arch)(weights=None)
        head_attr = "fc" if hasattr(probe, "fc") else "classifier" if hasattr(probe, "classifier") else "heads"
        return _torchvision(arch, head_attr)(pretrained=pretrained, in_channels=in_channels, **kwargs)
    if prefix == "monai" and arch:
        return _monai(arch, in_channels, spatial_dims, **kwargs)
    raise ValueError(
        f"unknown student {name!r}: use one of {list_students()}, or 'timm:<name>', 'torchvision:<name>', "
        "'monai:<resnet or densenet>'."
    )


_MONAI_DENSENETS = ("densenet121", "densenet169", "densenet201", "densenet264")


def _monai(arch: str, in_channels: int, spatial_dims: int, **kwargs) -> tuple[nn.Module, int]:
    """MONAI's ResNets and DenseNets (2D or 3D) without their classifier, returning pooled features."""
    from monai.networks.nets import densenet, resnet

    if arch.startswith("resnet") and hasattr(resnet, arch):
        model = getattr(resnet, arch)(
            pretrained=False, spatial_dims=spatial_dims, n_input_channels=in_channels, feed_forward=False, **kwargs
        )
        return model, int(model.in_planes)
    if arch in _MONAI_DENSENETS:
        model = getattr(densenet, arch)(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, **kwargs)
        # class_layers is relu -> global pool -> flatten -> Linear; dropping the Linear leaves pooled features
        num_features = int(model.class_layers.out.in_features)
        model.class_layers.out = nn.Identity()
        return model, num_features
    raise ValueError(
        f"unknown MONAI backbone {arch!r}; use one of resnet10/18/34/50/101/152/200 or {', '.join(_MONAI_DENSENETS)}."
    )


class StudentClassifier(nn.Module):
    """Student backbone S plus the shared linear classifier h: the model RD deploys.

    ``forward`` returns logits; ``forward_features`` returns the pooled student features z_S that RD aligns
    with the reprogrammed teacher features, and ``head`` is the classifier shared by both branches.

    For Deep RD the backbone is cut into N stages by walking its modules (:mod:`monai_rd.networks.student_stages`;
    nothing is added to the model): :meth:`forward_stages` returns the N stage maps and :meth:`forward_from` runs
    the stages after stage i and the pooling on a map of stage i's shape (a reprogrammed teacher map), so
    ``classify(forward_from(i, f))`` are the hybrid logits z_i.

    Args:
        backbone: a name for :func:`create_backbone`, or an ``nn.Module`` returning (B, num_features).
        num_classes: outputs of the shared classifier.
        num_features: feature width of a module backbone (found from the name otherwise).
        pretrained: ImageNet weights for a named backbone.
        in_channels: input channels of the deployed model.
        spatial_dims: 2 or 3 (for ``monai:`` backbones).
        dropout: dropout before the classifier.
        kwargs: passed to :func:`create_backbone` for a named backbone (e.g. a 3D DenseNet's ``block_config``).

    Raises:
        ValueError: a module backbone without ``num_features``.
    """

    # TorchScript compiles properties too; the Deep RD stage access is Python only (never part of the export)
    __jit_unused_properties__ = ["stage_names"]

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int,
        num_features: int | None = None,
        pretrained: bool = False,
        in_channels: int = 3,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            self.backbone_name = backbone
            backbone, num_features = create_backbone(backbone, pretrained, in_channels, spatial_dims, **kwargs)
        else:
            self.backbone_name = type(backbone).__name__
            if num_features is None:
                num_features = getattr(backbone, "num_features", None)
            if num_features is None:
                raise ValueError("pass num_features for a module backbone that has no `num_features` attribute.")
        self.backbone = backbone
        self.num_features = int(num_features)
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled student features z_S, (B, num_features)."""
        return torch.flatten(self.backbone(x), 1)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Shared classifier h on features of either branch: (B, num_features) -> (B, num_classes)."""
        return self.head(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images (B, in_channels, *spatial).

        Returns:
            Logits (B, num_classes).
        """
        return self.classify(self.forward_features(x))

    # ----------------------------------------------------------------------------------------- stages (Deep RD)
    def _split(self) -> StageSplit:
        # found from the modules on each call (cheap): nothing is stored on the model, so copies, DDP wrappers
        # and TorchScript see the model unchanged
        return split_backbone(self.backbone)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the N stages, shallow to deep: the path of each stage's last module in the backbone (e.g.
        ``layer1 .. layer4`` for a ResNet).

        Raises:
            ValueError: a backbone that cannot be cut into stages (e.g. a custom module).
        """
        return self._split().names

    def stage_modules(self, i: int) -> list[nn.Module]:
        """The backbone modules stage ``i`` runs (e.g. to freeze stages <= i).

        Args:
            i: 0-based stage index.

        Returns:
            The modules, in forward order.
        """
        split = self._split()
        return [self.backbone.get_submodule(p) for p in split.stages[stage_index(i, len(split.stages))]]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The student's N stage maps f_1^S .. f_N^S.

        Args:
            x: images (B, in_channels, *spatial).

        Returns:
            N maps (B, C_i, *spatial_i); the last is the map the backbone pools.
        """
        split = self._split()
        maps = []
        for k in range(len(split.stages)):
            x = split.run(self.backbone, k, x)
            maps.append(x)
        return maps

    def forward_from(self, i: int, f: torch.Tensor) -> torch.Tensor:
        """Run the stages after stage ``i`` and the pooling on ``f``: the pooled features of the hybrid path.

        ``forward_from(i, forward_stages(x)[i])`` equals ``forward_features(x)``. The stages <= i are not run, so a
        loss on the result gives no gradient to their parameters; ``f`` is not changed in place.

        Args:
            i: 0-based stage index in ``0 .. N - 1``; ``N - 1`` only pools.
            f: (B, C_i, *spatial_i), stage i's shape (e.g. a reprogrammed teacher map).

        Returns:
            Pooled features z (B, num_features), ready for :meth:`classify`.

        Raises:
            IndexError: ``i`` is not a stage index.
        """
        split = self._split()
        for k in range(stage_index(i, len(split.stages)) + 1, len(split.stages)):
            f = split.run(self.backbone, k, f)
        return torch.flatten(split.pool(self.backbone, f), 1)

    def stage_shapes(self, spatial_size: Sequence[int]) -> list[tuple[int, ...]]:
        """(C_i, *spatial_i) of each stage map for inputs of ``spatial_size`` (one dry run in eval mode without
        grad: BatchNorm statistics are not touched, no random numbers are drawn), e.g. to build the projectors.

        Args:
            spatial_size: input size, e.g. (64, 64).

        Returns:
            One shape per stage.
        """
        return dry_run_stage_shapes(self, spatial_size)
