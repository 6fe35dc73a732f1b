"""The training loop every monai_rd scheme shares: a student, a frozen teacher's signal, a guarded step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer

from monai_rd.engines.data_parallel import TrainableParts
from monai_rd.engines.teacher_features import TeacherFeatureSource
from monai_rd.handlers.non_finite_guard import NonFiniteGuard

__all__ = ["DistillationTrainer"]


class DistillationTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` for a student that learns from a frozen teacher's features, or alone.

    This class trains the student alone (the baseline every method is compared against): the loss function is
    called as ``loss(student_logits, target)``. Each distillation scheme is a subclass that says what the
    teacher's features become (:meth:`trainable_forward`) and how the loss combines them (:meth:`loss_terms`):
    :class:`~monai_rd.engines.RDTrainer` (Phi and the shared head), :class:`~monai_rd.engines.KDTrainer` (logits of a
    fixed teacher head), :class:`~monai_rd.engines.FeatureKDTrainer` (a feature-map loss),
    :class:`~monai_rd.engines.DenseRDTrainer` and :class:`~monai_rd.engines.DRDTrainer`. The loop around them is
    this class's:

    * **The teacher's features** of a batch come from the rows of a feature cache the batch names (the bundles'
      default), from precomputed features in the batch, or from the live teacher under ``torch.no_grad()``
      (:class:`~monai_rd.engines.TeacherFeatureSource`). The teacher is frozen whatever was passed (eval mode
      before every forward, no grad) and an optimizer holding any of its parameters is refused.
    * **One guarded step**: the forward pass of every trainable part as one module (:class:`TrainableParts`, so
      a ``parallel`` wrapper such as DDP sees one forward and one backward per step), the loss, backward,
      optional gradient clipping, the optimizer step, AMP (CUDA autocast with a ``GradScaler``) and gradient
      accumulation. A :class:`~monai_rd.handlers.NonFiniteGuard` stops the run at a NaN/Inf loss (before
      backward), gradient norm (before the step) or weight (after it), naming the batch's files.
    * ``engine.state.output`` holds ``image``, ``label``, ``pred`` (the student's logits: MONAI metrics and
      post-transforms work unchanged), ``loss`` and each of :attr:`loss_keys`, detached.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image`` and ``label`` (and teacher-feature cache rows or
            precomputed features).
        network: the deployable student, with ``forward_features`` and ``classify`` (a
            :class:`~monai_rd.networks.StudentClassifier` or :class:`~monai_rd.networks.SegmentationStudent`).
        optimizer: optimizer over the student's parameters and those of every trainable part.
        loss_function: the scheme's loss (see the subclass).
        teacher: the frozen teacher (a :class:`~monai_rd.networks.FrozenTeacher` or any ``nn.Module``), run when a
            batch carries no cached or precomputed features; None without one.
        trainable: the scheme's trainable modules besides the student, by name (``reprogrammer``, ...): they must
            be in the optimizer (those with trainable parameters), are trained in train mode, wrapped with the
            student for ``parallel``, checked by the guard and named in its messages.
        frozen: the scheme's fixed modules besides the teacher (a fitted teacher head): frozen like the teacher,
            refused in the optimizer, moved to the device.
        teacher_input_key: batch key of a separate teacher input (e.g. a higher-resolution view); None feeds the
            student's image to the teacher, which resizes it itself.
        teacher_feature_key: batch key of precomputed teacher features; when present the teacher is not run.
        feature_cache: a built :class:`~monai_rd.data.TeacherFeatureCache`; batches carrying its row indices under
            ``teacher_index_key`` (from ``CachedTeacherFeaturesd(output="index")``) are served from it on the
            trainer's device.
        teacher_index_key: batch key of those row indices.
        grad_clip_norm: clip the global gradient norm to this value before each optimizer step.
        source_key: batch key of the images' source paths, named when a step goes non-finite.
        parallel: wraps the trainable parts as one module (e.g.
            :func:`~monai_rd.engines.data_parallel.distributed_data_parallel`) for the length of each run.
        kwargs: other :class:`monai.engines.SupervisedTrainer` arguments (``amp``, ``accumulation_steps``,
            ``train_handlers``, ``key_train_metric``, ...).

    Raises:
        ValueError: the network lacks ``forward_features``/``classify``, the optimizer holds a frozen module's
            parameters or lacks a trainable module's.
    """

    #: the loss terms (besides ``loss``) put in ``engine.state.output``
    loss_keys: tuple[str, ...] = ("ce_student", "ce_teacher", "kd", "cka")
    #: whether the scheme learns from teacher features (a batch carrying them is refused otherwise)
    uses_teacher_features: bool = False

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable[..., Mapping[str, torch.Tensor]],
        teacher: nn.Module | None = None,
        trainable: Mapping[str, nn.Module | None] | None = None,
        frozen: Mapping[str, nn.Module | None] | None = None,
        teacher_input_key: str | None = None,
        teacher_feature_key: str = "teacher_features",
        feature_cache: Any | None = None,
        teacher_index_key: str = "teacher_feature_index",
        grad_clip_norm: float | None = None,
        source_key: str = "image_path",
        parallel: Callable[[nn.Module], nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        for attr in ("forward_features", "classify"):
            if not callable(getattr(network, attr, None)):
                raise ValueError(
                    f"{type(self).__name__}'s network must have `{attr}` (use monai_rd.networks.StudentClassifier or "
                    f"SegmentationStudent); got {type(network).__name__}."
                )
        trainable = {k: m for k, m in (trainable or {}).items() if m is not None}
        frozen = {k: m for k, m in {"teacher": teacher, **(frozen or {})}.items() if m is not None}
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for role, module in frozen.items():
            held = [n for n, p in module.named_parameters() if id(p) in in_opt]
            if held:
                raise ValueError(
                    f"the optimizer holds {len(held)} parameter(s) of the frozen {role.replace('_', ' ')} "
                    f"({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); build it over the student's and the "
                    f"trainable parts' parameters ({', '.join(['network', *trainable])}) only."
                )
            module.requires_grad_(False)
            module.eval()
        for role, module in trainable.items():
            missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in in_opt]
            if missing:
                raise ValueError(
                    f"the optimizer does not hold the {role}'s parameters ({missing[:3]}...); build it over "
                    f"list(network.parameters()) + list({role}.parameters())."
                )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.teacher = teacher
        self.feature_cache = feature_cache
        self.features = TeacherFeatureSource(
            teacher, feature_cache, teacher_input_key, teacher_feature_key, teacher_index_key
        )
        for name, module in trainable.items():
            setattr(self, name, module.to(device))
        for name, module in frozen.items():
            if name != "teacher":
                setattr(self, name, module.to(device))
        self.trainable_modules = {"network": network, **trainable}
        self.grad_clip_norm = grad_clip_norm
        self.source_key = source_key
        self.guard = NonFiniteGuard(
            self.trainable_modules,
            loss_keys=(Keys.LOSS, *self.loss_keys),
            extra_terms=self._loss_weights,
            source_key=source_key,
        )
        self.guard.attach(self)
        # one module for the whole trainable forward pass, so DDP sees one forward and one backward per step
        # (see monai_rd.engines.data_parallel)
        self._trainable_parts = TrainableParts(self.trainable_forward, **self.trainable_modules)
        self._parallel = parallel
        self.trainable_step = parallel(self._trainable_parts) if parallel is not None else self._trainable_parts

    def run(self) -> None:  # type: ignore[override]
        """Train; the ``parallel`` wrapper (DDP) exists for the length of the run only.

        DDP's reducer holds the process group: a wrapper that outlives ``destroy_process_group`` is destroyed at
        interpreter exit, where gloo's threads sometimes abort the process ("terminate called without an
        active exception"), so torchrun reports a finished run as failed. Releasing it here lets
        :func:`monai_rd.bundle.distributed.shutdown` leave the group cleanly; a second ``run`` wraps again.
        """
        if self._parallel is not None and self.trainable_step is self._trainable_parts:
            self.trainable_step = self._parallel(self._trainable_parts)
        try:
            super().run()
        finally:
            self.trainable_step = self._trainable_parts

    def teacher_features(self, batchdata: Mapping, inputs: torch.Tensor) -> torch.Tensor | None:
        """The batch's teacher features, without grad (see :class:`~monai_rd.engines.TeacherFeatureSource`)."""
        return self.features(batchdata, inputs, self.state.device, self.non_blocking)

    # ------------------------------------------------------------------------------------- what a scheme adds
    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The step's forward pass through every trainable part (what ``trainable_step`` runs).

        Args:
            inputs: (B, C, *spatial) student inputs on the device.
            feats_t: teacher features, or None.

        Returns:
            At least ``student_logits``; here also ``student_features`` (z_S).
        """
        z_s = self.network.forward_features(inputs)
        return {"student_features": z_s, "student_logits": self.network.classify(z_s)}

    def loss_terms(self, out: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of a step from :meth:`trainable_forward`'s outputs: ``loss`` and each of :attr:`loss_keys`."""
        return dict(self.loss_function(out["student_logits"], targets))

    def _loss_weights(self) -> dict[str, float]:
        """The loss's scheduled weights, for the guard's messages."""
        return {k: float(getattr(self.loss_function, k)) for k in ("alpha", "beta") if hasattr(self.loss_function, k)}

    def train_mode(self) -> None:
        """Put every trainable part in train mode (those with frozen parameters stay in eval mode)."""
        for module in self.trainable_modules.values():
            module.train(any(p.requires_grad for p in module.parameters()) or next(module.parameters(), None) is None)

    # --------------------------------------------------------------------------------------------- the step
    def _accumulation_flags(self, engine: DistillationTrainer) -> tuple[bool, bool]:
        acc = engine.accumulation_steps
        if acc == 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local_iter = (engine.state.iteration - 1) % epoch_length
            return local_iter % acc == 0, (local_iter + 1) % acc == 0 or (local_iter + 1) == epoch_length
        local_iter = engine.state.iteration - 1
        return local_iter % acc == 0, (local_iter + 1) % acc == 0

    def _trainable_parameters(self) -> Sequence[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        feats_t = engine.teacher_features(batchdata, inputs)
        if feats_t is not None and not engine.uses_teacher_features:
            raise ValueError(
                f"the batch carries teacher features but {type(engine).__name__} trains the student alone; use the "
                "trainer of a distillation scheme (e.g. RDTrainer with a reprogrammer)."
            )
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        def _compute() -> None:
            out = engine.trainable_step(inputs, feats_t)
            engine.state.output[Keys.PRED] = out["student_logits"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output.update(engine.loss_terms(out, targets))
            engine.fire_event(IterationEvents.LOSS_COMPLETED)  # the guard checks the loss here, before backward

        should_zero_grad, should_step = engine._accumulation_flags(engine)
        acc = engine.accumulation_steps
        engine.train_mode()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_scaler = engine.amp and engine.scaler is not None
        # MONAI autocasts on "cuda" only; on other devices that context would do nothing but warn
        on_cuda = torch.device(engine.state.device).type == "cuda"
        with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler and on_cuda else contextlib.nullcontext():
            _compute()
        loss = engine.state.output[Keys.LOSS]
        scaled = loss / acc if acc > 1 else loss
        (engine.scaler.scale(scaled) if use_scaler else scaled).backward()  # type: ignore[union-attr]
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if engine.grad_clip_norm is not None:
                if use_scaler:
                    engine.scaler.unscale_(engine.optimizer)  # type: ignore[union-attr]
                total_norm = torch.nn.utils.clip_grad_norm_(engine._trainable_parameters(), engine.grad_clip_norm)
                if not use_scaler:  # with a GradScaler, inf/NaN gradients only make it skip this step
                    engine.guard.check_grad_norm(engine, total_norm)
            if use_scaler:
                engine.scaler.step(engine.optimizer)  # type: ignore[union-attr]
                engine.scaler.update()  # type: ignore[union-attr]
            else:
                engine.optimizer.step()
        for k, v in engine._loss_weights().items():
            engine.state.output[k] = torch.tensor(v)
        for k in (Keys.LOSS, *engine.loss_keys):
            if k in engine.state.output:
                engine.state.output[k] = engine.state.output[k].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # the guard checks the weights here, after the step
        return engine.state.output
