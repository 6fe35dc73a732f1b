"""A training method as a Python object: its teacher signal, loss, trainer stage(s) and what it deploys.

A bundle's ``train.json`` declares the shared components (the options, the student ``network_def``, a factory of
the teacher and one of its feature cache, the data, optimizer, handlers and evaluator) and one ``method_def``:
:func:`monai_rd.methods.create_method` builds the :class:`Method` that ``--method`` names, and the recipe asks it
for what differs between methods, with no branch in the JSON:

- ``network``: the model validated, tested and saved as ``models/model.pt`` (the student, or for the teacher
  baselines the teacher and its head);
- ``loss`` and ``parameters()`` (the optimizer's), ``checkpoint_parts()`` (the trainable parts a checkpoint holds
  besides the network), ``loss_keys`` (the terms logged and plotted);
- ``train_transforms(base, augmentation)``: the training preprocessing (with the cache's row lookup when the
  teacher's features are cached);
- ``prepare(datalist, base, augmentation)``: the stages before training (teacher adaptation, the feature caches,
  the linear probe);
- ``trainer(**kwargs)``: the MONAI trainer of the method's scheme, given the recipe's standard trainer arguments;
- ``branch_evaluator(...)``: an extra evaluator whose metrics the validation records (RD's teacher branch);
- ``run(trainer, evaluator)``: what ``run`` does (train, or evaluate a deployed teacher).

Randomness: the teacher (and anything random built with it, such as LoRA adapters) is built in ``initialize``
right after the seed is set; the student and the method's own parts when the trainer is built, after the training
loader, in that order. MONAI's ``DataLoader`` (with ``num_workers=0``) draws its transforms' seed from the global
stream and then resets it to the seed, so the student starts from the seeded state whatever the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
from monai.transforms import Compose, EnsureTyped

from monai_rd.data.feature_cache import CachedTeacherFeaturesd, RandCachedTeacherFeaturesd, build_cache_once
from monai_rd.engines.distillation_trainer import DistillationTrainer
from monai_rd.errors import OptionError
from monai_rd.handlers.loss_weight_schedule import LinearLossWeight

__all__ = [
    "METHODS",
    "Method",
    "MethodSpec",
    "create_method",
    "deployed_network",
    "get_method_spec",
    "list_methods",
    "register_method",
]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One ``--method`` value: its implementation per recipe and the options it fixes or defaults.

    Attributes:
        name: the option value.
        summary: one line for tables and messages.
        impl: the :class:`Method` subclass per task (``"classification"``, ``"segmentation"``).
        params: keyword arguments of the class (e.g. ``feature_loss="fitnets"``, ``adapt="lora"``).
        fixed: options the method fixes whatever the command line says: ``alpha`` (the teacher-branch CE weight,
            start and end), ``beta`` (the KL weight, start and end) and ``gamma`` (the CKA weight).
        feature_weight: the default of ``--distill_weight`` (the feature-distillation term's weight).
        teacher_lr: the default of ``--teacher_lr`` (teacher adaptation's learning rate).
    """

    name: str
    summary: str
    impl: Mapping[str, type[Method]]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    feature_weight: float = 0.0
    teacher_lr: float = 0.0

    @property
    def _cls(self) -> type[Method]:
        return next(iter(self.impl.values()))

    @property
    def uses_teacher(self) -> bool:
        """Whether the method builds the teacher at all."""
        return self._cls.uses_teacher

    @property
    def phi(self) -> bool:
        """Whether the method trains RD's reprogramming module Phi (and so has a teacher branch to score)."""
        return self._cls.has_phi

    @property
    def direct(self) -> bool:
        """Whether Phi and the head are trained first and frozen (direct reprogramming)."""
        return bool(self.params.get("direct", False))

    @property
    def adapt(self) -> str | None:
        """``"finetune"`` or ``"lora"`` when the teacher is adapted before it is used, else None."""
        return self.params.get("adapt")

    def option(self, name: str, value: Any) -> Any:
        """The method's fixed value of option ``name`` (``alpha``, ``beta`` or ``gamma``), else ``value``."""
        return self.fixed.get(name, value)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` under its name (a second registration of a name is refused)."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice.")
    METHODS[spec.name] = spec
    return spec


def list_methods(task: str | None = None) -> list[str]:
    """Method names, in registration order; with ``task``, those that recipe supports."""
    return [n for n, s in METHODS.items() if task is None or task in s.impl]


def get_method_spec(method: Any, distill: Any = True, task: str = "classification") -> MethodSpec:
    """The ``--method`` option, with the older ``--distill false`` accepted as ``--method student``.

    Args:
        method: the option's value.
        distill: the ``--distill`` option (true/false).
        task: the recipe (``classification`` or ``segmentation``).

    Raises:
        OptionError: an unknown method, one the recipe does not have, or ``--distill false`` with a method other
            than ``student``/``rd``.
    """
    from monai_rd.utils.options import as_bool

    name = str(method).strip().lower()
    if name not in METHODS:
        raise OptionError(f"--method must be one of {', '.join(list_methods(task))}; got {method!r}.")
    if not as_bool(distill, "distill"):
        if name not in ("rd", "student"):
            raise OptionError(
                f"--distill false means --method student (the student alone); it contradicts --method {name}. "
                "Drop --distill false."
            )
        name = "student"
    spec = METHODS[name]
    if task not in spec.impl:
        raise OptionError(
            f"--method {name} is not available for {task} bundles; choose one of {', '.join(list_methods(task))}."
        )
    return spec


def create_method(options: Any, **components: Any) -> Method:
    """The :class:`Method` that ``options.method`` names, built for this run.

    Args:
        options: the run's validated options (:class:`monai_rd.bundle.ClassificationOptions` or
            :class:`~monai_rd.bundle.SegmentationOptions`): its ``spec`` is the method and ``task`` the recipe.
        components: the recipe's ``teacher`` (a factory), ``feature_cache`` (a factory) and ``device``.
    """
    spec: MethodSpec = options.spec
    return spec.impl[options.task](options, **components, **spec.params)


class Method:
    """The method that trains the student alone; every other method subclasses it.

    Its life in a run follows the recipe: built in ``initialize`` (options, the teacher and cache factories),
    :meth:`prepare` (still in ``initialize``: the teacher and what must exist before training, such as the
    feature cache), then :meth:`deploy` when the trainer is built (the student, just built from the recipe's
    ``network_def``, and the method's own trainable parts), :meth:`trainer` and :meth:`run`.

    Args:
        options: the run's validated options.
        teacher: a factory building the frozen teacher (the recipe's ``teacher`` in MONAI's ``callable`` mode),
            called only by methods that use one.
        feature_cache: a factory building a :class:`~monai_rd.data.TeacherFeatureCache` (``callable`` mode).
        device: the run's device.
    """

    uses_teacher: ClassVar[bool] = False
    has_phi: ClassVar[bool] = False
    trainer_class: ClassVar[type[DistillationTrainer]] = DistillationTrainer

    def __init__(
        self,
        options: Any,
        teacher: Callable[..., nn.Module] | None = None,
        feature_cache: Callable[..., Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.options = options
        self.device = torch.device(device)
        self._make_teacher = teacher
        self._make_cache = feature_cache
        self.teacher: nn.Module | None = None
        self.cache: Any | None = None
        self.student: nn.Module | None = None
        self.datalist: Mapping[str, Sequence[Mapping]] = {}
        self.loss = self.build_loss()

    # ------------------------------------------------------------------------------------------------ parts
    def make_teacher(self) -> nn.Module:
        """The frozen teacher, from the recipe's factory (a method adds what it builds with it).

        Raises:
            OptionError: the recipe gave no teacher factory.
        """
        if self._make_teacher is None:
            raise OptionError(f"--method {self.options.method} needs a teacher; the bundle's config defines none.")
        return self._make_teacher()

    # the loss classes of monai_rd.losses (classification, segmentation) and the name of their option that
    # ``--detach_teacher`` sets; Deep RD's methods name theirs
    loss_names: ClassVar[tuple[str, str]] = ("RDLoss", "DenseRDLoss")
    detach_option: ClassVar[str] = "detach_teacher"

    def build_loss(self) -> nn.Module:
        """The loss: :class:`~monai_rd.losses.RDLoss` (classification) or :class:`~monai_rd.losses.DenseRDLoss`
        (the classes :attr:`loss_names` names), with the run's weights, τ and CKA settings."""
        from monai_rd import losses

        o = self.options
        common = dict(alpha=o.alpha_start, beta=o.beta_start, gamma=o.gamma, tau=o.tau,
                      logit_standardise=o.logit_standardise, **{self.detach_option: o.detach_teacher})
        classification, segmentation = (getattr(losses, name) for name in self.loss_names)
        if o.task == "segmentation":
            return segmentation(**common, cka_mode=o.cka_mode, cka_num_voxels=o.cka_num_voxels, seed=o.seed)
        return classification(**common, multi_label=o.multi_label)

    def deploy(self, student: nn.Module) -> nn.Module:
        """Take the student and build the method's own trainable parts with it.

        Called when the recipe builds its trainer: the student has just been built (``network_def``) and the method's
        parts (Phi, a feature loss) are initialised right after it, from the random stream it left.

        Args:
            student: the deployable student.

        Returns:
            :attr:`network`, the model validated, tested and saved as ``models/model.pt``.
        """
        self.student = student
        self.build_parts()
        return self.network

    def build_parts(self) -> None:
        """Build the trainable parts besides the student (none here)."""

    @property
    def network(self) -> nn.Module:
        """The model validated, tested and saved as ``models/model.pt``: the student."""
        if self.student is None:
            raise RuntimeError(f"{type(self).__name__}.network is read before deploy(student) was called.")
        return self.student

    @classmethod
    def deployed_network(
        cls, options: Any, student: nn.Module, teacher: Callable[..., nn.Module] | None = None
    ) -> nn.Module:
        """What :attr:`network` is for a trained model, built without training anything (see
        :func:`~monai_rd.methods.method.deployed_network`): the student."""
        return student

    def trainable_parts(self) -> dict[str, nn.Module]:
        """The method's trainable modules besides the network (Phi, a feature loss), by name."""
        return {}

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer trains: the network's parameters, then those of :meth:`trainable_parts`."""
        return [p for m in (self.network, *self.trainable_parts().values()) for p in m.parameters()]

    def checkpoint_parts(self) -> dict[str, nn.Module]:
        """What a checkpoint holds besides the network, optimizer, schedule and run state."""
        return self.trainable_parts()

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The loss terms the trainer puts in its output (logged every iteration, plotted every epoch)."""
        return ("loss", *self.trainer_class.loss_keys)

    # ------------------------------------------------------------------------------------------------ data
    @property
    def uses_cache(self) -> bool:
        """Whether the student trains on cached teacher features (``--cache_teacher``, for a method with a teacher)."""
        return self.uses_teacher and self.options.cache_teacher

    @property
    def cache_views(self) -> int:
        """Views per image in the cache (``--cache_views``; segmentation caches one)."""
        return getattr(self.options, "cache_views", 1)

    def train_transforms(self, base: Sequence[Callable], augmentation: Sequence[Callable]) -> Compose:
        """The training preprocessing: the base transforms, the cache's row lookup (when cached), tensors, and the
        augmentation (unless the cache holds augmented views: the student then trains on exactly the cached view).

        With one cached view the lookup is deterministic, so ``CacheDataset`` caches it with the loading; the
        augmentation then runs on plain tensors, which is several times faster.
        """
        keys = "image" if self.options.task == "classification" else ["image", "label"]
        lookup: list[Callable] = []
        if self.uses_cache:
            cls = RandCachedTeacherFeaturesd if self.cache_views > 1 else CachedTeacherFeaturesd
            lookup = [cls(keys="image", cache=self.cache, output="index")]
        augment = [] if self.uses_cache and self.cache_views > 1 else list(augmentation)
        return Compose([*base, *lookup, EnsureTyped(keys=keys, track_meta=False), *augment])

    def validation_transforms(self, base: Sequence[Callable]) -> Compose:
        """The validation (and test) preprocessing: the base transforms, then plain tensors."""
        keys = "image" if self.options.task == "classification" else ["image", "label"]
        return Compose([*base, EnsureTyped(keys=keys, track_meta=False)])

    def make_cache(self, transform: Callable, **kwargs: Any) -> Any:
        """A teacher-feature cache of the teacher's features through ``transform``, from the recipe's factory.

        Classification computes the features in batches of 64 (the images are small), segmentation in the
        training's batch size (whole volumes); both in ``--cache_dtype`` on the run's device.
        """
        o = self.options
        batch_size = 64 if o.task == "classification" else o.batch_size
        return self._make_cache(
            teacher=self.teacher, transform=transform, device=self.device, dtype=o.cache_dtype, batch_size=batch_size,
            **kwargs,
        )

    def cache_views_kwargs(self, augmentation: Sequence) -> dict[str, Any]:
        """The cache's views (``--cache_views``: view 0 un-augmented, the others through the augmentation);
        segmentation caches one view."""
        if self.options.task != "classification":
            return {}
        return {"views": self.cache_views, "augment": Compose(list(augmentation))}

    def prepare(
        self, datalist: Mapping[str, Sequence[Mapping]], base: Sequence[Callable], augmentation: Sequence
    ) -> None:
        """The stages before training: the teacher (for a method that uses one), then the teacher-feature cache of
        the training items (built once).

        Args:
            datalist: the run's datalist.
            base: the recipe's deterministic base transforms (file to tensor).
            augmentation: the recipe's training augmentation.
        """
        self.datalist = datalist
        if self.uses_teacher:
            self.teacher = self.make_teacher()
        if self.uses_cache:
            self.cache = self.make_cache(Compose(list(base)), **self.cache_views_kwargs(augmentation))
            build_cache_once(self.cache, self.options.training_items(datalist))

    # --------------------------------------------------------------------------------------------- training
    def trainer_kwargs(self) -> dict[str, Any]:
        """The method's own arguments of :attr:`trainer_class` (its parts, the teacher and its cache)."""
        if not self.uses_teacher:
            return {}
        return {"teacher": self.teacher, "feature_cache": self.cache}

    def trainer(self, **kwargs: Any) -> DistillationTrainer:
        """The method's trainer, given the recipe's standard ``SupervisedTrainer`` arguments (``device``,
        ``max_epochs``, ``train_data_loader``, ``network``, ``optimizer``, ``loss_function``, ``train_handlers``,
        ``amp``, ...), with the schedule of the loss's weights attached.

        The loss's ``alpha`` and ``beta`` go linearly from ``--alpha_start``/``--beta_start`` to their end values
        (:meth:`~monai_rd.bundle.TrainOptions.loss_weight_ends`) over the run, set before every iteration.
        """
        source_key = "image_path" if self.options.task == "classification" else "source_path"
        trainer = self.trainer_class(**kwargs, **self.trainer_kwargs(), source_key=source_key)
        o, steps = self.options, self.options.epochs * trainer.state.epoch_length
        for name, start, end in zip(
            ("alpha", "beta"), (o.alpha_start, o.beta_start), o.loss_weight_ends(self.datalist)
        ):
            if hasattr(self.loss, name):
                LinearLossWeight(self.loss, name, start, end, steps).attach(trainer)
        return trainer

    def branch_evaluator(self, postprocessing: Callable, metrics: Mapping[str, Mapping]) -> Any | None:
        """An evaluator of a second branch to score beside the student each epoch (None: the method has none).

        Args:
            postprocessing: the validation's postprocessing of the predictions.
            metrics: the validation's metrics, ``{"key": {...}, "additional": {...}}`` (copied, not shared).
        """
        return None

    def run(self, trainer: Any, evaluator: Any) -> None:
        """Train the student (``run`` of the recipe)."""
        trainer.run()


def deployed_network(options: Any, student: nn.Module, teacher: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The network a trained model of ``options.method`` is, to load its ``model.pt`` into (evaluation).

    The student for every method that trains one; for the teacher baselines (``probe``, ``finetune``, ``lora``),
    the teacher (built from its factory) with its head. Nothing else is built: evaluating a student needs no
    teacher weights.

    Args:
        options: the run's validated options.
        student: the student (the recipe's ``network_def``).
        teacher: the teacher factory.
    """
    return options.spec.impl[options.task].deployed_network(options, student, teacher)
