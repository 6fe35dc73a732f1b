"""SupervisedTrainer for Reprogramming Distillation."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Events
from torch.optim import Optimizer

from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_rd.engines.data_parallel import TrainableParts, average_gradients
from monai_rd.errors import NonFiniteError
from monai_rd.losses.rd import RDLoss
from monai_rd.networks.feature_map import FeatureMapHook

__all__ = ["RDTrainer", "RD_OUTPUT_KEYS", "FEATURE_KD_KEY"]

logger = logging.getLogger(__name__)

# loss terms RDTrainer puts in ``engine.state.output`` besides image/label/pred
RD_OUTPUT_KEYS = ("loss", "ce_student", "ce_teacher", "kd", "cka", "alpha", "beta")
# the feature-distillation term, in the output only when the trainer has a ``feature_loss``
FEATURE_KD_KEY = "feature_kd"


class RDTrainer(SupervisedTrainer):
    """Trains a student and the reprogramming module Phi against a frozen teacher.

    Each iteration: teacher features without grad (or precomputed ones from the batch), ``z_T = Phi(features)``,
    ``z_S = S(x)``, the shared classifier ``h`` on both, the :class:`~monai_rd.losses.RDLoss` terms, backward and
    an optimizer step. ``engine.state.output`` holds ``pred`` (student logits) and ``label``, so MONAI metrics
    and post-transforms work unchanged, plus ``loss``, ``ce_student``, ``ce_teacher``, ``kd``, ``cka``, ``alpha``
    and ``beta``. With ``teacher=None`` and no precomputed features, the student is trained alone (CE only):
    the baseline RD is compared against.

    The teacher is frozen here whatever was passed (a :class:`~monai_rd.networks.FrozenTeacher` or a plain
    ``nn.Module``): its parameters stop requiring grad, it runs under ``torch.no_grad()`` and is put back in eval
    mode before every forward (so a handler calling ``train()`` cannot let BatchNorm statistics or dropout
    change), and an optimizer holding any of its parameters is refused. It is moved to the trainer's device only
    when a batch first needs it, so a teacher whose features a cache serves never leaves where it was built.

    An iteration stops with :class:`~monai_rd.errors.NonFiniteError` when the loss is NaN/Inf (checked before
    the backward pass; the message gives the iteration, every loss term and the batch's files), when the clipped
    gradient norm is non-finite (before the optimizer step), or when a trainable parameter or a floating-point
    buffer of the student or Phi is non-finite after the step (one fused reduction, one host sync). The error is
    raised inside the iteration, so no ``ITERATION_COMPLETED``/``EPOCH_COMPLETED`` handler (a checkpoint saver)
    runs on a diverged model; a handler that saves on ``EXCEPTION_RAISED`` must itself skip this error, since the
    student's BatchNorm statistics already saw the batch. With AMP, a step the ``GradScaler`` skips for inf/NaN
    gradients is normal and raises nothing.

    The same loop trains the baselines RD is compared against (``monai_rd.compare``), each from the same
    teacher features:

    * ``teacher_head`` (Hinton KD from a fitted, frozen linear probe of the teacher): the teacher-branch logits
      are ``teacher_head(features)`` instead of ``h(Phi(features))``; no Phi, no CKA (no ``z_T``).
    * ``feature_loss`` (FitNets, attention transfer, similarity-preserving, CRD): ``loss(F_S, features)`` is added
      with weight ``feature_loss_weight`` and reported as ``feature_kd``; ``F_S`` is the student's last feature map
      before pooling (:class:`~monai_rd.networks.feature_map.FeatureMapHook`). The loss's own trainable parts
      (a regressor, embeddings) must be in the optimizer.
    * ``direct_epochs`` (direct reprogramming, an RD ablation): before the first epoch, Phi and the shared
      classifier ``network.head`` are trained alone on the teacher features (CE, a fresh optimizer of the same
      class and hyper-parameters, cosine-annealed over those epochs), then frozen (eval mode, no gradient) for
      the whole run, so the student distils a fixed reprogrammed teacher. A run resumed after epoch 1 does not
      repeat it: the checkpoint holds the fitted Phi and head.

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image`` and ``label`` (and optionally teacher inputs/features).
        network: the deployable student, with ``forward_features`` and ``classify`` (a
            :class:`~monai_rd.networks.StudentClassifier`).
        optimizer: optimizer over the student's and Phi's parameters.
        loss_function: an :class:`~monai_rd.losses.RDLoss`.
        teacher: the teacher (a :class:`~monai_rd.networks.FrozenTeacher`, or any ``nn.Module``, which is frozen
            in place as described above), or None.
        reprogrammer: Phi (a :class:`~monai_rd.networks.ReprogrammingNet`); required with a teacher.
        teacher_input_key: batch key of a separate teacher input (e.g. a higher-resolution view); None feeds the
            student's image to the teacher, which resizes it itself.
        teacher_feature_key: batch key of precomputed teacher features (from a feature cache); when present in
            a batch the teacher is not run.
        feature_cache: a built :class:`~monai_rd.data.TeacherFeatureCache`; batches carrying its row indices under
            ``teacher_index_key`` (from ``CachedTeacherFeaturesd(output="index")``) are served from it on the
            trainer's device.
        teacher_index_key: batch key of those row indices.
        grad_clip_norm: clip the global gradient norm to this value before each optimizer step.
        source_key: batch key of the images' source paths (e.g. from ``CopyItemsd(keys="image",
            names="image_path")`` placed before loading), named when a batch makes the loss non-finite; without it
            the image's MetaTensor ``filename_or_obj`` is used.
        teacher_head: frozen module mapping teacher features to teacher logits (e.g. a fitted
            :class:`~monai_rd.networks.linear_probe.LinearProbe`), used instead of a reprogrammer.
        feature_loss: a feature-distillation loss ``f(student_map, teacher_features)``.
        feature_loss_weight: its weight in the total loss.
        direct_epochs: epochs of training Phi and ``network.head`` alone before the run, then frozen (0: off).
        parallel: wraps the trainable parts as one module (:class:`~monai_rd.engines.data_parallel.TrainableParts`:
            student with its head, Phi, feature loss; never the teacher), e.g.
            :func:`~monai_rd.engines.data_parallel.distributed_data_parallel` for multi-GPU training; each
            step's trainable forward pass then runs through it.
        kwargs: other :class:`monai.engines.SupervisedTrainer` arguments (``amp``, ``accumulation_steps``,
            ``train_handlers``, ``key_train_metric``, ...).

    Raises:
        ValueError: the network lacks ``forward_features``/``classify``, a teacher is given without Phi, a teacher
            head or a feature loss, both Phi and a teacher head are given, Phi's or the feature loss's trainable
            parameters are not in the optimizer, the optimizer holds teacher or teacher-head parameters,
            ``direct_epochs`` without Phi or ``network.head``, or the loss is not an RDLoss.
        NonFiniteError: (while running) a non-finite loss, gradient norm or weight, as described above.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: RDLoss,
        teacher: nn.Module | None = None,
        reprogrammer: nn.Module | None = None,
        teacher_input_key: str | None = None,
        teacher_feature_key: str = "teacher_features",
        grad_clip_norm: float | None = None,
        feature_cache: Any | None = None,
        teacher_index_key: str = "teacher_feature_index",
        source_key: str = "image_path",
        teacher_head: nn.Module | None = None,
        feature_loss: nn.Module | None = None,
        feature_loss_weight: float = 1.0,
        direct_epochs: int = 0,
        parallel: Callable[[nn.Module], nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        for attr in ("forward_features", "classify"):
            if not callable(getattr(network, attr, None)):
                raise ValueError(
                    f"RDTrainer's network must have `{attr}` (use monai_rd.networks.StudentClassifier); "
                    f"got {type(network).__name__}."
                )
        if not isinstance(loss_function, RDLoss):
            raise ValueError(f"loss_function must be a monai_rd.losses.RDLoss, got {type(loss_function).__name__}.")
        if teacher is not None and reprogrammer is None and teacher_head is None and feature_loss is None:
            raise ValueError("a teacher needs a reprogrammer (Phi) to map its features; pass reprogrammer=.")
        if reprogrammer is not None and teacher_head is not None:
            raise ValueError("pass a reprogrammer (RD) or a teacher_head (KD from fixed teacher logits), not both.")
        if direct_epochs < 0 or (
            direct_epochs and (reprogrammer is None or not isinstance(getattr(network, "head", None), nn.Module))
        ):
            raise ValueError(
                f"direct_epochs={direct_epochs} needs a reprogrammer and a network with a `head` classifier "
                "(StudentClassifier), and must be >= 0."
            )
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for role, frozen in (("frozen teacher", teacher), ("frozen teacher head", teacher_head)):
            if frozen is None:
                continue
            held = [n for n, p in frozen.named_parameters() if id(p) in in_opt]
            if held:
                raise ValueError(
                    f"the optimizer holds {len(held)} parameter(s) of the {role} ({', '.join(held[:5])}"
                    f"{', ...' if len(held) > 5 else ''}); build it over list(network.parameters()) + "
                    "list(reprogrammer.parameters()) only."
                )
            frozen.requires_grad_(False)
            frozen.eval()
        for role, part in (("reprogrammer", reprogrammer), ("feature_loss", feature_loss)):
            if part is None:
                continue
            missing = [n for n, p in part.named_parameters() if p.requires_grad and id(p) not in in_opt]
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
        self.teacher = teacher  # moved to the device by _live_teacher, when a batch first needs it
        self._teacher_on_device = False
        self.reprogrammer = reprogrammer.to(device) if reprogrammer is not None else None
        self.teacher_input_key = teacher_input_key
        self.teacher_feature_key = teacher_feature_key
        self.grad_clip_norm = grad_clip_norm
        self.feature_cache = feature_cache
        self.teacher_index_key = teacher_index_key
        self.source_key = source_key
        self.teacher_head = teacher_head.to(device) if teacher_head is not None else None
        self.feature_loss = feature_loss.to(device) if feature_loss is not None else None
        self.feature_loss_weight = float(feature_loss_weight)
        self._feature_map = FeatureMapHook(getattr(network, "backbone", network)) if feature_loss is not None else None
        self.direct_epochs = int(direct_epochs)
        if self.direct_epochs:
            # frozen from the start, so a resumed run (which skips the direct stage) never trains them
            self._direct_parameters(trainable=False)
            self.add_event_handler(Events.EPOCH_STARTED, self._direct_reprogramming)
        # one module for the whole trainable forward pass, so DDP sees one forward and one backward per step
        # (see monai_rd.engines.data_parallel); built after direct reprogramming froze Phi and the head
        self._trainable_parts = TrainableParts(
            self.trainable_forward, network=network, reprogrammer=self.reprogrammer, feature_loss=self.feature_loss
        )
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

    def teacher_features(self, batchdata: dict, inputs: torch.Tensor) -> torch.Tensor | None:
        """Teacher features for a batch, without grad.

        Args:
            batchdata: the raw batch dict.
            inputs: the student's inputs already on the device.

        Returns:
            (B, C_T, *spatial) or (B, C_T) features on the device, or None when training the student alone.
        """
        if isinstance(batchdata, dict) and self.teacher_index_key in batchdata:
            if self.feature_cache is None:
                raise ValueError(
                    f"the batch carries teacher-feature cache rows under {self.teacher_index_key!r} but the trainer "
                    "has no feature_cache; pass the same TeacherFeatureCache as feature_cache=."
                )
            return self.feature_cache.gather(batchdata[self.teacher_index_key], self.state.device)
        if isinstance(batchdata, dict) and self.teacher_feature_key in batchdata:
            feats = batchdata[self.teacher_feature_key]
            return torch.as_tensor(feats).to(self.state.device, non_blocking=self.non_blocking).float()
        if self.teacher is None:
            return None
        x = inputs
        if self.teacher_input_key is not None:
            if self.teacher_input_key not in batchdata:
                raise KeyError(f"teacher_input_key {self.teacher_input_key!r} is not in the batch ({list(batchdata)}).")
            x = torch.as_tensor(batchdata[self.teacher_input_key]).to(self.state.device, non_blocking=self.non_blocking)
        with torch.no_grad():
            return self._live_teacher()(x).detach()

    def _live_teacher(self) -> nn.Module:
        """The teacher on the trainer's device, in eval mode."""
        teacher: nn.Module = self.teacher  # type: ignore[assignment]
        if not self._teacher_on_device:
            # not at construction: a teacher whose features the cache serves (possibly a huge one) stays put
            teacher.to(self.state.device)
            self._teacher_on_device = True
        teacher.eval()  # every time: a handler may have called train() on it
        return teacher

    def _direct_parameters(self, trainable: bool) -> list[torch.Tensor]:
        params = [*self.reprogrammer.parameters(), *self.network.head.parameters()]  # type: ignore[union-attr]
        for p in params:
            p.requires_grad_(trainable)
            p.grad = None
        return params

    def _direct_reprogramming(self, engine: RDTrainer) -> None:
        """Direct reprogramming: train Phi and the shared head alone on the teacher features, then freeze them."""
        if engine.state.epoch != 1:  # a run resumed from a checkpoint has them already
            return
        loss_fn: RDLoss = self.loss_function  # type: ignore[assignment]
        params = self._direct_parameters(trainable=True)
        accepted = inspect.signature(type(self.optimizer)).parameters  # e.g. AdamW's defaults hold more than it takes
        opt = type(self.optimizer)(params, **{k: v for k, v in self.optimizer.defaults.items() if k in accepted})
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.direct_epochs)
        self.reprogrammer.train()  # type: ignore[union-attr]
        self.network.train()
        for epoch in range(1, self.direct_epochs + 1):
            total, count = 0.0, 0
            for batchdata in self.data_loader:
                batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
                inputs, targets = batch[0], batch[1]
                feats = self.teacher_features(batchdata, inputs)
                if feats is None:
                    raise ValueError("direct reprogramming needs teacher features in every batch (a teacher or cache).")
                logits_t = self.network.classify(self.reprogrammer(feats))  # type: ignore[misc]
                loss = loss_fn.supervised(logits_t, targets)
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteError(
                        f"non-finite CE ({float(loss)}) while training Phi and the head alone (direct reprogramming, "
                        f"epoch {epoch} of {self.direct_epochs}); {self._batch_sources(batchdata, inputs)}."
                    )
                opt.zero_grad()
                loss.backward()
                average_gradients(params)  # outside DDP: keep Phi and the head identical on every rank
                opt.step()
                total, count = total + float(loss.detach()) * len(targets), count + len(targets)
            schedule.step()
            mean_ce = total / max(count, 1)
            logger.info(f"direct reprogramming: epoch {epoch}/{self.direct_epochs}, teacher-branch CE {mean_ce:.4f}")
        self._direct_parameters(trainable=False)
        self.reprogrammer.eval()  # type: ignore[union-attr]

    def _where(self) -> str:
        it, epoch, length = self.state.iteration, self.state.epoch, self.state.epoch_length
        local = f", iteration {(it - 1) % length + 1} of {length} in the epoch" if length else ""
        return f"iteration {it} (epoch {epoch}{local})"

    def _terms(self) -> str:
        out = self.state.output
        loss_fn: RDLoss = self.loss_function  # type: ignore[assignment]
        keys = (*RD_OUTPUT_KEYS[:5], FEATURE_KD_KEY)
        values = {k: float(torch.as_tensor(out[k]).detach()) for k in keys if k in out}
        values.update(alpha=loss_fn.alpha, beta=loss_fn.beta)
        return ", ".join(f"{k}={v:.6g}" for k, v in values.items())

    def _batch_sources(self, batchdata: Any, inputs: torch.Tensor) -> str:
        """The batch's source files, and which of them hold non-finite input values, for error messages."""
        names: Any = None
        if isinstance(batchdata, Mapping):
            if self.source_key in batchdata:
                names = batchdata[self.source_key]
            elif isinstance(batchdata.get(Keys.IMAGE), MetaTensor):
                names = batchdata[Keys.IMAGE].meta.get("filename_or_obj")
        if isinstance(names, (str, os.PathLike)):
            names = [names]
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        bad = []
        if x.is_floating_point():
            bad = (~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero().flatten().tolist()
        if not isinstance(names, (list, tuple)) or len(names) != x.shape[0]:
            text = (
                f"the batch's file names are unknown (put the source paths under {self.source_key!r}, e.g. with "
                f"CopyItemsd(keys='image', names={self.source_key!r}) before loading, or load MetaTensors)"
            )
            return text + (f"; samples {bad} of the batch have NaN/Inf input values" if bad else "")
        text = "files: " + ", ".join(str(n) for n in names)
        return text + (f"; NaN/Inf input values in: {', '.join(str(names[i]) for i in bad)}" if bad else "")

    def _check_finite_loss(self, batchdata: Any, inputs: torch.Tensor) -> None:
        if bool(torch.isfinite(self.state.output[Keys.LOSS])):  # the one host sync before backward
            return
        raise NonFiniteError(
            f"non-finite loss at {self._where()}: {self._terms()}; {self._batch_sources(batchdata, inputs)}. "
            "Training stopped before the backward pass and the optimizer step of this batch. Check these images "
            "for NaN/Inf values, or lower the learning rate if the loss grew over the previous iterations."
        )

    def _check_finite_grad_norm(self, total_norm: torch.Tensor, batchdata: Any, inputs: torch.Tensor) -> None:
        if bool(torch.isfinite(total_norm)):
            return
        raise NonFiniteError(
            f"non-finite gradient norm ({float(total_norm)}) at {self._where()} with a finite loss: {self._terms()}; "
            f"{self._batch_sources(batchdata, inputs)}. Training stopped before the optimizer step; lower the "
            "learning rate, or look for operations with unbounded gradients in the model (e.g. sqrt or log at 0)."
        )

    @torch.no_grad()
    def _check_finite_weights(self, batchdata: Any, inputs: torch.Tensor) -> None:
        modules = [m for m in (self.network, self.reprogrammer, self.feature_loss) if m is not None]
        tensors = [p for g in self.optimizer.param_groups for p in g["params"]]
        tensors += [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not tensors:
            return
        # max |w| per tensor in one fused kernel (a norm of order 2 would overflow for large finite weights)
        finite = torch.stack([m.float() for m in torch._foreach_norm(tensors, float("inf"))]).isfinite()
        if bool(finite.all()):  # one host sync per step
            return
        first = tensors[int((~finite).nonzero()[0])]
        names = {
            id(t): f"{prefix}.{n}"
            for prefix, m in (
                ("network", self.network),
                ("reprogrammer", self.reprogrammer),
                ("feature_loss", self.feature_loss),
            )
            if m is not None
            for n, t in [*m.named_parameters(), *m.named_buffers()]
        }
        lrs = dict.fromkeys(str(g.get("lr")) for g in self.optimizer.param_groups)
        raise NonFiniteError(
            f"non-finite weights after the optimizer step at {self._where()}: the first is "
            f"{names.get(id(first), 'an optimizer parameter outside network, reprogrammer and feature loss')!r} "
            f"(learning rate "
            f"{', '.join(lrs)}); loss terms of the batch: {self._terms()}; "
            f"{self._batch_sources(batchdata, inputs)}. Training stopped before any handler could save these weights; "
            "lower the learning rate or set grad_clip_norm."
        )

    def _accumulation_flags(self, engine: RDTrainer) -> tuple[bool, bool]:
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

    def reprogram(self, teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
        """Phi on the teacher's features: ``z_T``, in the student's feature space.

        Args:
            teacher_features: (B, C_T, *spatial) or (B, C_T).
            student_features: ``z_S``, (B, D); subclasses may use its shape (a dense Phi resamples to it).

        Returns:
            ``z_T`` with ``student_features``' shape.
        """
        return self.reprogrammer(teacher_features)  # type: ignore[misc]

    def trainable_forward(self, inputs: torch.Tensor, feats_t: torch.Tensor | None) -> tuple:
        """The step's forward pass through every trainable part (what ``trainable_step`` runs).

        Args:
            inputs: (B, C, *spatial) student inputs on the device.
            feats_t: teacher features (B, C_T, *spatial) or (B, C_T), or None (the student alone).

        Returns:
            ``(z_S, student logits, z_T or None, teacher-branch logits or None, feature-KD term or None)``.
        """
        z_s = self.network.forward_features(inputs)
        logits_s = self.network.classify(z_s)
        z_t = logits_t = feature_kd = None
        if feats_t is not None and self.reprogrammer is not None:
            z_t = self.reprogram(feats_t, z_s)
            logits_t = self.network.classify(z_t)
        elif feats_t is not None and self.teacher_head is not None:
            with torch.no_grad():
                logits_t = self.teacher_head(feats_t)
        if self.feature_loss is not None and feats_t is not None:
            feature_kd = self.feature_loss(self._feature_map.take(), feats_t)  # type: ignore[union-attr]
        return z_s, logits_s, z_t, logits_t, feature_kd

    def _iteration(self, engine: RDTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        feats_t = engine.teacher_features(batchdata, inputs)
        uses_features = (engine.reprogrammer, engine.teacher_head, engine.feature_loss)
        if feats_t is not None and all(m is None for m in uses_features):
            raise ValueError("the batch carries teacher features but the trainer has no reprogrammer (Phi).")
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        loss_fn: RDLoss = engine.loss_function  # type: ignore[assignment]

        def _compute() -> None:
            z_s, logits_s, z_t, logits_t, feature_kd = engine.trainable_step(inputs, feats_t)
            engine.state.output[Keys.PRED] = logits_s
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = loss_fn(logits_s, targets, logits_t, z_s, z_t)
            if feature_kd is not None:
                terms["loss"] = terms["loss"] + engine.feature_loss_weight * feature_kd
                terms[FEATURE_KD_KEY] = feature_kd
            engine.state.output.update(terms)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        should_zero_grad, should_step = engine._accumulation_flags(engine)
        acc = engine.accumulation_steps
        engine.network.train()
        if engine.reprogrammer is not None:
            engine.reprogrammer.train(not engine.direct_epochs)  # a directly reprogrammed Phi stays frozen
        if engine.feature_loss is not None:
            engine.feature_loss.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_scaler = engine.amp and engine.scaler is not None
        # MONAI autocasts on "cuda" only; on other devices that context would do nothing but warn
        on_cuda = torch.device(engine.state.device).type == "cuda"
        with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler and on_cuda else contextlib.nullcontext():
            _compute()
        engine._check_finite_loss(batchdata, inputs)
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
                    engine._check_finite_grad_norm(total_norm, batchdata, inputs)
            if use_scaler:
                engine.scaler.step(engine.optimizer)  # type: ignore[union-attr]
                engine.scaler.update()  # type: ignore[union-attr]
            else:
                engine.optimizer.step()
            engine._check_finite_weights(batchdata, inputs)
        engine.state.output["alpha"] = torch.tensor(loss_fn.alpha)
        engine.state.output["beta"] = torch.tensor(loss_fn.beta)
        for k in (*RD_OUTPUT_KEYS[:5], FEATURE_KD_KEY):
            if k in engine.state.output:
                engine.state.output[k] = engine.state.output[k].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
