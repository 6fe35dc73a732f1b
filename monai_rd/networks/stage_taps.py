"""Stage taps: where a frozen teacher's N named intermediate maps come from, for Deep Reprogramming Distillation.

A :class:`StageTaps` object tells :meth:`monai_rd.networks.FrozenTeacher.stage_maps` how to take named maps out of
the teacher's model. Each kind wraps the mechanism the model's own library offers:

- :class:`GraphTaps`: ``torchvision.models.feature_extraction.create_feature_extractor`` (torch.fx), for CNNs
  written as plain modules (torchvision ResNets, DenseNets, MobileNets, EfficientNet-Lite, CLIP's ModifiedResNet,
  the I3D ResNet of Astra);
- :class:`IntermediateTaps`: timm's ``forward_intermediates`` (every timm model, ViTs included: tokens come back as
  maps), and :class:`OpenCLIPTaps` open_clip's (its image towers);
- :class:`HiddenStateTaps`: ``transformers``' ``output_hidden_states`` (RAD-DINO's ``Dinov2Model``);
- :class:`EncoderTaps`: an encoder that returns its stage maps itself (MONAI's Swin Transformer ``swinViT``);
- :class:`HookTaps`: forward hooks on named submodules, written here, for networks none of these libraries can
  extract from (``monai:`` networks with a ``feature_layer``).

Taps are plain objects, not modules: a teacher's ``state_dict`` keys and its :meth:`FrozenTeacher.fingerprint` are
the same with or without them. :meth:`StageTaps.identity` is the part of
:meth:`FrozenTeacher.stage_fingerprint` that says where the maps come from.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_rd.networks.stages import DEFAULT_NUM_STAGES, evenly_spaced
from monai_rd.networks.token_maps import tokens_to_map

__all__ = [
    "EncoderTaps",
    "GraphTaps",
    "HiddenStateTaps",
    "HookTaps",
    "IntermediateTaps",
    "OpenCLIPTaps",
    "StageTaps",
    "timm_taps",
    "vit_block_stages",
    "vit_block_taps",
]

_MAX_NAMES_SHOWN = 20


class StageTaps:
    """Base class: the named intermediate maps ("taps") of a teacher's model.

    Args:
        default: the tap names :meth:`FrozenTeacher.stage_maps` returns unless others are selected, shallow to
            deep (N of them, 4 for most teachers).
    """

    def __init__(self, default: Sequence[str]) -> None:
        self.default = tuple(str(s) for s in default)

    def locate(self, model: nn.Module, name: str) -> Hashable | None:
        """Where the tap ``name`` is in ``model`` (a graph node, a block index, ...), or None if there is no such tap.

        Args:
            model: the teacher's model (``FrozenTeacher.model``).
            name: a tap name.
        """
        raise NotImplementedError

    def options(self, model: nn.Module, name: str) -> str:
        """The names :meth:`locate` accepts (those closest to ``name`` first), for error messages."""
        raise NotImplementedError

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        """Run ``model`` on the preprocessed ``x`` and return the maps at ``locations`` (from :meth:`locate`).

        Args:
            model: the teacher's model.
            x: (B, C, *spatial) preprocessed input.
            locations: one per requested tap, in the order wanted.

        Returns:
            One map (B, C_i, *spatial_i) per location.
        """
        raise NotImplementedError

    def config(self) -> tuple:
        """Everything besides the model that decides the maps (used by :meth:`identity`)."""
        return ()

    def identity(self) -> str:
        """A stable description of where the maps come from (no object addresses), for cache keys."""
        return repr((type(self).__name__, self.default, self.config()))

    def resolve(self, model: nn.Module, stages: Sequence[str], teacher: str) -> list[Hashable]:
        """The locations of ``stages``, checked.

        Args:
            model: the teacher's model.
            stages: tap names.
            teacher: the teacher's name, for messages.

        Returns:
            One location per name.

        Raises:
            ValueError: no names, a repeated name, or a name that is not a tap (the message lists the taps).
        """
        stages = [str(s) for s in stages]
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"teacher {teacher!r}: stages must be distinct tap names, got {stages}.")
        locations = []
        for name in stages:
            location = self.locate(model, name)
            if location is None:
                raise ValueError(
                    f"teacher {teacher!r} has no stage tap {name!r}; its default taps are {list(self.default)}, and "
                    f"it accepts {self.options(model, name)}."
                )
            locations.append(location)
        return locations


def _module_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and not isinstance(m, (nn.ModuleList, nn.ModuleDict))]


def _closest(name: str, names: Sequence[str]) -> str:
    shown = list(names[:_MAX_NAMES_SHOWN])
    more = f" ... and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return f"closest {difflib.get_close_matches(name, names, n=5, cutoff=0.5)}; all: {shown}{more}"


class GraphTaps(StageTaps):
    """Taps taken with torchvision's ``create_feature_extractor`` (torch.fx) from a model written as plain modules.

    A tap is a graph node: a named ``nodes`` entry, or the output of any submodule, named by its path in the
    published model. ``path_map`` rewrites a leading path component to the teacher's trunk (a torchvision ResNet's
    ``layer3`` is entry ``6`` of its ``conv1 ... layer4`` ``nn.Sequential``), and ``root`` is where the published
    model sits inside the teacher's model. The traced extractor shares the model's modules (it owns no weights) and
    is kept for one selection, set of modules, device and dtype, outside the module tree so the teacher's
    ``state_dict`` is unchanged.

    Args:
        default: default tap names.
        nodes: tap name -> graph node name, for taps that are not a submodule's output (e.g. the second call of a
            shared activation: ``_swish_1``).
        path_map: leading path component in the published model -> the trunk's ("" drops it), e.g.
            ``{"features": ""}`` when the teacher's model is ``model.features``.
        root: path of the published model inside the teacher's model ("" for the model itself).
        leaf_modules: module classes fx must not trace into (e.g. an attention pool the taps never need).
        permute: axes permutation applied to every map (e.g. an I3D's (Z, X, Y) back to the input's (X, Y, Z)).
    """

    def __init__(
        self,
        default: Sequence[str],
        nodes: Mapping[str, str] | None = None,
        path_map: Mapping[str, str] | None = None,
        root: str = "",
        leaf_modules: Sequence[type] = (),
        permute: Sequence[int] | None = None,
    ) -> None:
        super().__init__(default)
        self.nodes = dict(nodes or {})
        self.path_map = dict(path_map or {})
        self.root = root
        self.leaf_modules = tuple(leaf_modules)
        self.permute = tuple(permute) if permute is not None else None
        self._extractors: dict[tuple, nn.Module] = {}

    def _trunk_path(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head in self.path_map:
            name = ".".join(p for p in (self.path_map[head], rest) if p)
        return ".".join(p for p in (self.root, name) if p)

    def _published(self, path: str) -> str:
        """A path in the teacher's model -> its name in the published model (the inverse of :meth:`_trunk_path`)."""
        if self.root:
            path = path[len(self.root) + 1 :] if path.startswith(self.root + ".") else path
        inverse = {v: k for k, v in self.path_map.items() if v}
        dropped = next((k for k, v in self.path_map.items() if v == ""), None)
        head, _, rest = path.partition(".")
        if head in inverse:
            return ".".join(p for p in (inverse[head], rest) if p)
        return f"{dropped}.{path}" if dropped else path

    def locate(self, model: nn.Module, name: str) -> str | None:
        if name in self.nodes:
            return self.nodes[name]
        path = self._trunk_path(name)
        return path if name and path in dict(model.named_modules()) else None

    def options(self, model: nn.Module, name: str) -> str:
        names = [self._published(n) for n in _module_names(model) if not self.root or n.startswith(self.root + ".")]
        return f"{sorted(self.nodes)} or the path of a submodule: {_closest(name, names)}"

    def config(self) -> tuple:
        leaves = tuple(f"{c.__module__}.{c.__qualname__}" for c in self.leaf_modules)
        return (sorted(self.nodes.items()), sorted(self.path_map.items()), self.root, leaves, self.permute)

    def _extractor(self, model: nn.Module, nodes: tuple[str, ...]) -> nn.Module:
        param = next(model.parameters(), None)
        # the modules themselves (not only the model) key the trace: a module replaced in place (e.g. a LoRA
        # adapter injected into the teacher) must be traced anew
        where = (param.device, param.dtype) if param is not None else None
        key = (nodes, tuple(map(id, model.modules())), where)
        if key not in self._extractors:
            from torchvision.models.feature_extraction import create_feature_extractor

            self._extractors.clear()  # one selection at a time: a stale device or dtype is never kept
            # the teacher's model always runs in eval mode, so only the eval graph is ever used and the train
            # graph's extra nodes (dropout, drop-connect) do not matter
            try:
                self._extractors[key] = create_feature_extractor(
                    model,
                    return_nodes={n: n for n in nodes},
                    tracer_kwargs={"leaf_modules": list(self.leaf_modules)} if self.leaf_modules else None,
                    suppress_diff_warning=True,
                ).eval()
            except ValueError as e:  # a submodule the forward never calls has no graph node
                raise ValueError(
                    f"stage taps {[self._published(n) for n in nodes]} of {type(model).__name__}: {e}"
                ) from e
        return self._extractors[key]

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        nodes = tuple(dict.fromkeys(str(n) for n in locations))
        out = self._extractor(model, nodes)(x)
        maps = [out[str(n)] for n in locations]
        return [m.permute(*self.permute) for m in maps] if self.permute is not None else maps

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_extractors"] = {}  # traced from the model: rebuilt on first use by a copy
        return state


class IntermediateTaps(StageTaps):
    """Taps taken with timm's ``forward_intermediates``: feature indices of a timm model (its ``feature_info``).

    Args:
        default: default tap names.
        indices: tap name -> index in the model's ``feature_info`` (a ViT's block index).
        norm: apply the model's final norm to every tap (ViTs: the last block's tap is then ``forward_features``).
        attr: dotted path of the timm model inside the teacher's model ("" for the model itself).
    """

    def __init__(self, default: Sequence[str], indices: Mapping[str, int], norm: bool = False, attr: str = "") -> None:
        super().__init__(default)
        self.indices = {str(k): int(v) for k, v in indices.items()}
        self.norm = bool(norm)
        self.attr = attr

    def locate(self, model: nn.Module, name: str) -> int | None:
        return self.indices.get(name)

    def options(self, model: nn.Module, name: str) -> str:
        return f"the timm feature_info modules {list(self.indices)}"

    def config(self) -> tuple:
        return (sorted(self.indices.items()), self.norm, self.attr)

    def _intermediates(self, net: nn.Module, x: torch.Tensor, take: list[int]) -> list[torch.Tensor]:
        kwargs = {"norm": True} if self.norm else {}  # some timm families take no norm argument
        return net.forward_intermediates(  # type: ignore[operator]
            x, indices=take, stop_early=True, output_fmt="NCHW", intermediates_only=True, **kwargs
        )

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        net = model.get_submodule(self.attr) if self.attr else model
        take = sorted({int(i) for i in locations})  # type: ignore[call-overload]
        by_index = dict(zip(take, self._intermediates(net, x, take)))
        return [by_index[int(i)] for i in locations]  # type: ignore[call-overload]


class OpenCLIPTaps(IntermediateTaps):
    """Taps taken with open_clip's own ``forward_intermediates`` of an image tower (``ModifiedResNet``: ``stem``,
    ``layer1 .. layer4``; ``VisionTransformer``: its residual blocks, patch tokens as maps)."""

    def _intermediates(self, net: nn.Module, x: torch.Tensor, take: list[int]) -> list[torch.Tensor]:
        out = net.forward_intermediates(  # type: ignore[operator]
            x, indices=take, stop_early=True, normalize_intermediates=self.norm, intermediates_only=True,
            output_fmt="NCHW",
        )
        return out["image_intermediates"]


def timm_taps(model: nn.Module, num_stages: int = DEFAULT_NUM_STAGES, attr: str = "") -> IntermediateTaps:
    """The taps of a timm model from its ``feature_info``: the last ``num_stages`` entries, or for a model that
    keeps one stride throughout (a ViT) ``num_stages`` evenly spaced blocks with the final norm applied.

    Args:
        model: the timm model (``feature_info`` and ``forward_intermediates``).
        num_stages: N.
        attr: its path inside the teacher's model.

    Returns:
        Taps named by the ``feature_info`` module names (``layer1``, ``blocks.2``, ``stages.3`` ...).

    Raises:
        ValueError: the model has no ``feature_info`` or ``forward_intermediates``.
    """
    info = list(getattr(model, "feature_info", None) or [])
    if not info or not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm model {type(model).__name__} has no feature_info/forward_intermediates, so it has no stage taps."
        )
    names = [str(f["module"]) for f in info]
    isotropic = len({f["reduction"] for f in info}) == 1
    picks = evenly_spaced(len(names), num_stages) if isotropic else list(range(len(names)))[-num_stages:]
    return IntermediateTaps([names[i] for i in picks], {n: i for i, n in enumerate(names)}, norm=isotropic, attr=attr)


def vit_block_stages(depth: int, num_stages: int = DEFAULT_NUM_STAGES) -> tuple[str, ...]:
    """Default stage taps of a ViT: ``blocks.<i>`` at ``num_stages`` evenly spaced depths (2, 5, 8, 11 of 12).

    Args:
        depth: number of blocks.
        num_stages: N.

    Returns:
        The tap names, shallow to deep.
    """
    return tuple(f"blocks.{i}" for i in evenly_spaced(depth, num_stages))


def vit_block_taps(depth: int, norm: bool, attr: str = "") -> IntermediateTaps:
    """Stage taps of a timm ViT (``forward_intermediates``): any block, :func:`vit_block_stages` by default.

    Args:
        depth: number of blocks.
        norm: apply the final norm to every tap.
        attr: path of the timm model inside the teacher's model.
    """
    return IntermediateTaps(vit_block_stages(depth), {f"blocks.{i}": i for i in range(depth)}, norm=norm, attr=attr)


class HiddenStateTaps(StageTaps):
    """Taps of a ``transformers`` vision model from its ``output_hidden_states``: layer outputs, final layer norm
    applied, prefix tokens dropped and patch tokens reshaped to maps (the last layer's tap is ``last_hidden_state``).

    Args:
        default: default tap names.
        layers: tap name -> 0-based encoder layer index.
        attr: path of the ``transformers`` model inside the teacher's model.
        norm: attribute of its final layer norm.
        num_prefix_tokens: class/register tokens in front of the patch tokens.
        patch_size: patch size (the map is (H / patch, W / patch)).
    """

    def __init__(
        self,
        default: Sequence[str],
        layers: Mapping[str, int],
        attr: str = "model",
        norm: str = "layernorm",
        num_prefix_tokens: int = 1,
        patch_size: int = 14,
    ) -> None:
        super().__init__(default)
        self.layers = {str(k): int(v) for k, v in layers.items()}
        self.attr = attr
        self.norm = norm
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_size = int(patch_size)

    def locate(self, model: nn.Module, name: str) -> int | None:
        return self.layers.get(name)

    def options(self, model: nn.Module, name: str) -> str:
        return f"the encoder layers {list(self.layers)}"

    def config(self) -> tuple:
        return (sorted(self.layers.items()), self.attr, self.norm, self.num_prefix_tokens, self.patch_size)

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        net = model.get_submodule(self.attr)
        hidden = net(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings, then each layer
        norm = net.get_submodule(self.norm)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        layers = [int(i) for i in locations]  # type: ignore[call-overload]
        return [tokens_to_map(norm(hidden[i + 1]), self.num_prefix_tokens, grid) for i in layers]


class EncoderTaps(StageTaps):
    """Taps of an encoder that returns the list of its stage maps itself, e.g. MONAI's ``SwinTransformer``
    (``swinViT``), held with its call arguments by the teacher's model (``monai_net.EncoderStage``: ``encoder`` and
    ``encoder_kwargs``).

    Args:
        default: default tap names.
        indices: tap name -> index in the returned list.
    """

    def __init__(self, default: Sequence[str], indices: Mapping[str, int]) -> None:
        super().__init__(default)
        self.indices = {str(k): int(v) for k, v in indices.items()}

    def locate(self, model: nn.Module, name: str) -> int | None:
        return self.indices.get(name)

    def options(self, model: nn.Module, name: str) -> str:
        return f"the encoder's maps {list(self.indices)}"

    def config(self) -> tuple:
        return (sorted(self.indices.items()),)

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        outs = model.encoder(x, **model.encoder_kwargs)  # type: ignore[operator]
        return [outs[int(i)] for i in locations]  # type: ignore[call-overload]


class _AllCaptured(Exception):
    """Stops the network's forward once every tapped submodule has run."""


class HookTaps(StageTaps):
    """Taps taken with forward hooks on submodules, for networks no library can extract from (MONAI networks).

    Any submodule is a tap, named by its path in the network; the first call of a module in a forward is the one
    taken, and the forward stops as soon as every tapped module has run (the layers after the deepest are never
    computed).

    Args:
        default: default tap names (submodule paths).
        root: path of the network inside the teacher's model (``"model"`` for ``monai_net.LayerOutput``).
    """

    def __init__(self, default: Sequence[str], root: str = "") -> None:
        super().__init__(default)
        self.root = root

    def _network(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.root) if self.root else model

    def locate(self, model: nn.Module, name: str) -> str | None:
        modules = dict(self._network(model).named_modules())
        ok = name and name in modules and not isinstance(modules[name], (nn.ModuleList, nn.ModuleDict))
        return name if ok else None

    def options(self, model: nn.Module, name: str) -> str:
        return f"the path of a submodule the forward calls: {_closest(name, _module_names(self._network(model)))}"

    def config(self) -> tuple:
        return (self.root,)

    def maps(self, model: nn.Module, x: torch.Tensor, locations: Sequence[Hashable]) -> list[torch.Tensor]:
        net = self._network(model)
        wanted = list(dict.fromkeys(str(n) for n in locations))
        captured: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(module: nn.Module, args: object, output: object) -> None:
                captured.setdefault(name, output)  # type: ignore[arg-type]
                if len(captured) == len(wanted):
                    raise _AllCaptured

            return hook

        handles = [net.get_submodule(n).register_forward_hook(hook_for(n)) for n in wanted]
        try:
            net(x)
        except _AllCaptured:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in wanted if n not in captured]
        if missing:
            raise RuntimeError(f"stage taps {missing} were not called by {type(net).__name__}.forward.")
        bad = [n for n in wanted if not isinstance(captured[n], torch.Tensor) or captured[n].ndim != x.ndim]
        if bad:
            raise RuntimeError(
                f"stage taps {bad} of {type(net).__name__} did not return (B, C, *spatial) maps with {x.ndim - 2} "
                "spatial axes; name convolutional blocks."
            )
        return [captured[str(n)] for n in locations]
