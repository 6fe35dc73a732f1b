"""The teacher adapted to the task with a linear head: fine-tuned end to end, or through LoRA adapters (HF ``peft``).

The baselines ``finetune``/``lora`` (deploy the adapted teacher) and ``lora_kd`` (distil it) of
``monai_rd.compare``. The adaptation itself is a training stage of its own, run before the student's
(:func:`monai_rd.engines.adapt_teacher`); afterwards the teacher is frozen again and used like any frozen teacher.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_rd.errors import OptionError
from monai_rd.networks.frozen_teacher import FrozenTeacher
from monai_rd.networks.linear_probe import LinearProbe, TeacherLinearProbe, _pooled

__all__ = [
    "ADAPTATIONS",
    "AdaptedTeacherClassifier",
    "as_lora_targets",
    "inject_lora",
    "lora_target_modules",
    "plain_convs",
]

ADAPTATIONS = ("finetune", "lora")
LORA_KEY = "lora_"  # peft's adapter parameters are lora_A/lora_B (and lora_embedding_*, lora_magnitude_*)


def as_lora_targets(value: Any, name: str = "lora_targets") -> str | list[str] | None:
    """The ``--lora_targets`` option: None (``null``, empty: every layer the features use), a list of module-name
    suffixes, or one regex string matched against full module names (peft's ``target_modules``).

    Raises:
        OptionError: not null, a string, or a list of non-empty strings.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    if isinstance(value, str) and value.strip().startswith("["):  # a list as a config file or shell writes it
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as e:
            raise OptionError(f"--{name} {value!r} is not a valid list of module names: {e}.") from e
    elif isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise OptionError(
        f"--{name} must be null (every Linear/Conv2d layer the teacher's features use), a list of module-name "
        f"suffixes such as \"['qkv','proj','fc1','fc2']\", or one regex; got {value!r}."
    )


def _adaptable(module: nn.Module) -> bool:
    # peft builds a conv's adapters as type(layer)(...), so only plain nn.Conv2d (see plain_convs); its LoRA for
    # grouped (depthwise) convs needs rank % groups == 0 and cannot be merged: left out
    return isinstance(module, nn.Linear) or (type(module) is nn.Conv2d and module.groups == 1)


def plain_convs(model: nn.Module) -> int:
    """Replace each ``nn.Conv2d`` subclass in ``model`` that computes exactly what a plain ``nn.Conv2d`` with its
    settings computes (e.g. the 1x1 convs of a TF-"SAME"-padding EfficientNet port) by that plain conv, holding
    the same parameter tensors, in place.

    peft creates a conv layer's LoRA adapters by calling the layer's own class, which such subclasses' constructors
    do not accept; after this their LoRA is peft's own. Equality is checked on a random input, bit for bit, so a
    subclass with padding of its own (a 'SAME' 3x3 conv) is kept and gets no adapter. Parameters and
    state-dict keys are unchanged (so is :meth:`FrozenTeacher.fingerprint`); no global random numbers are drawn.

    Args:
        model: the module to rewrite.

    Returns:
        How many layers were replaced.
    """
    generator = torch.Generator().manual_seed(0)
    swapped = 0
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.Conv2d) or type(m) is nn.Conv2d:
            continue
        plain = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,  # type: ignore[arg-type]
            bias=m.bias is not None, padding_mode=m.padding_mode, device="meta",
        )
        plain.weight, plain.bias = m.weight, m.bias
        same = True
        for size in (12, 13):  # an odd size alone hides 'SAME' padding on the bottom/right of a strided conv
            x = torch.rand(1, m.in_channels, size, size, generator=generator).to(m.weight)
            with torch.no_grad():
                same = same and (a := m(x)).shape == (b := plain(x)).shape and torch.equal(a, b)
        if same:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain.train(m.training))
            swapped += 1
    return swapped


def lora_target_modules(teacher: FrozenTeacher) -> list[str]:
    """The Linear and (ungrouped) Conv2d layers that the teacher's feature forward runs: LoRA's default targets.

    Found with one dry run at the teacher's native input size, so a classifier layer the features never reach
    (e.g. a CNN's ImageNet ``fc``) or a Linear whose weight is used functionally (``nn.MultiheadAttention``'s
    ``out_proj``) gets no adapter that could never be trained.

    Args:
        teacher: the frozen teacher.

    Returns:
        Module names in ``teacher.model`` (full dotted names, as peft's ``target_modules`` takes them), in call order.
    """
    called: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: called.append(name))
        for name, m in teacher.model.named_modules()
        if _adaptable(m)
    ]
    try:
        size = teacher.input_size or (224, 224)
        device = next(teacher.model.parameters(), torch.empty(0)).device
        teacher(torch.zeros(1, teacher.in_channels, *size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(called))


def inject_lora(
    teacher: FrozenTeacher,
    rank: int = 8,
    alpha: float = 16.0,
    targets: str | Sequence[str] | None = None,
    dropout: float = 0.0,
) -> list[str]:
    """Inject LoRA adapters (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``) into ``teacher.model``, in place.

    peft starts ``lora_B`` at zero, so the adapted teacher computes exactly what the teacher did until the
    adapters are trained. The adapters' random ``lora_A`` are drawn from a forked RNG: injecting consumes no
    random numbers of the run (the student's initialisation is the same as in the other methods).

    Args:
        teacher: the frozen teacher; its parameters stay frozen, the adapters are created frozen too.
        rank: LoRA rank r.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        targets: peft ``target_modules``: module-name suffixes (e.g. ``["qkv", "proj", "fc1", "fc2"]``) or one regex
            matched against full names; None: every layer :func:`lora_target_modules` finds.
        dropout: LoRA dropout.

    Returns:
        Names of the adapted layers in ``teacher.model``.

    Raises:
        OptionError: no layer matches ``targets`` (``--lora_targets``), or peft cannot adapt a matched layer.
    """
    import peft

    if isinstance(targets, str) and not targets.strip():
        targets = None
    plain_convs(teacher.model)
    names = (
        lora_target_modules(teacher) if targets is None else ([targets] if isinstance(targets, str) else list(targets))
    )
    if not names:
        raise OptionError(
            f"teacher {teacher.name!r} runs no Linear or Conv2d layer LoRA could adapt; "
            "name layers with --lora_targets."
        )
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
        target_modules=names[0] if isinstance(targets, str) else names,
    )
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        try:
            peft.inject_adapter_in_model(config, teacher.model)
        except ValueError as e:
            raise OptionError(
                f"--lora_targets {targets!r}: peft could not adapt teacher {teacher.name!r} ({e}). Name Linear or "
                "Conv2d modules of the teacher (suffixes like qkv, proj, fc1, fc2), or leave it null for every layer "
                "its features use."
            ) from e
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in teacher.model.named_modules() if n.endswith(".lora_A")})
    teacher.model.requires_grad_(False)
    if isinstance(targets, str) and not adapted:  # peft accepts a regex that matches nothing in some versions
        raise OptionError(f"--lora_targets {targets!r} matches no layer of teacher {teacher.name!r}.")
    return adapted


class AdaptedTeacherClassifier(TeacherLinearProbe):
    """The teacher and a linear head as one classifier whose teacher can be adapted before it is frozen.

    ``mode="finetune"`` adapts every teacher weight, ``mode="lora"`` only LoRA adapters injected at construction
    (:func:`inject_lora`). Between :meth:`start_adaptation` and :meth:`freeze` the adapted parameters and the
    head require grad and the teacher runs with autograd; otherwise this is a :class:`TeacherLinearProbe`
    (teacher frozen, in eval mode, run without gradients). BatchNorm statistics and dropout stay frozen (the
    teacher is always in eval mode) during adaptation too: only the weights the mode names change.

    The checkpoint (``state_dict``) holds the head and what the adaptation changed: every teacher entry for
    ``finetune``, the LoRA adapters for ``lora``. Rebuilding it means creating the teacher from its own weights,
    constructing this class with the same ``mode`` and LoRA options, and loading the checkpoint.

    Args:
        teacher: the frozen teacher (a :class:`~monai_rd.networks.FrozenTeacher`).
        probe: the linear head over the teacher's pooled features.
        mode: ``finetune`` or ``lora``.
        lora_rank: LoRA rank (``lora``).
        lora_alpha: LoRA alpha (``lora``).
        lora_targets: peft ``target_modules`` (``lora``); None: every Linear/Conv2d layer the features use.

    Raises:
        OptionError: an unknown mode, or LoRA options peft refuses.
    """

    def __init__(
        self,
        teacher: FrozenTeacher,
        probe: LinearProbe,
        mode: str,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_targets: str | Sequence[str] | None = None,
    ) -> None:
        if mode not in ADAPTATIONS:
            raise OptionError(f"teacher adaptation mode must be one of {', '.join(ADAPTATIONS)}; got {mode!r}.")
        if not hasattr(teacher, "extract"):
            raise TypeError(
                f"the teacher must be a monai_rd FrozenTeacher (with extract()); got {type(teacher).__name__}."
            )
        self.mode = mode
        self.adapted_layers = inject_lora(teacher, lora_rank, lora_alpha, lora_targets) if mode == "lora" else []
        super().__init__(teacher, probe)

    def checkpointed_teacher_key(self, key: str) -> bool:
        """Every teacher entry for ``finetune``; the LoRA adapters' for ``lora``."""
        return self.mode == "finetune" or LORA_KEY in key

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The teacher parameters the adaptation trains (all for ``finetune``, the LoRA adapters for ``lora``)."""
        return [p for n, p in self.teacher.named_parameters() if self.checkpointed_teacher_key(n)]

    @property
    def adapting(self) -> bool:
        """Whether the teacher is being adapted (some of its parameters require grad)."""
        return any(p.requires_grad for p in self.teacher.parameters())

    def start_adaptation(self) -> AdaptedTeacherClassifier:
        """Make the adapted parameters and the head trainable; returns self."""
        self.requires_grad_(False)
        for p in [*self.adapted_parameters(), *self.probe.parameters()]:
            p.requires_grad_(True)
        return self

    def freeze(self) -> AdaptedTeacherClassifier:
        """Freeze the adapted teacher and its head (eval mode, no gradients): from now on it is a frozen teacher."""
        self.requires_grad_(False)
        self.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled teacher features (B, C_T); with gradients while adapting."""
        if self.adapting and torch.is_grad_enabled():
            return _pooled(self.teacher.extract(x)).float()
        return super().forward_features(x)

    def extra_repr(self) -> str:
        lora = f", {len(self.adapted_layers)} LoRA layers" if self.mode == "lora" else ""
        return f"mode={self.mode!r}{lora}"
