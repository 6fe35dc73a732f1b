"""SupervisedTrainer for dense (segmentation) Reprogramming Distillation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_rd.engines.rd_trainer import RD_OUTPUT_KEYS, RDTrainer
from monai_rd.losses.dense_rd import DenseRDLoss

__all__ = ["DenseRDTrainer"]


class DenseRDTrainer(RDTrainer):
    """Trains a segmentation student and a dense Phi against a frozen teacher (2D or 3D).

    Each iteration: teacher feature maps without grad (a live frozen teacher, precomputed maps under
    ``teacher_feature_key``, or rows of a feature cache), the student's last decoder map ``f_S =
    S.forward_features(x)`` (B, F, *spatial), ``f_T = Phi(features, spatial_size=f_S.shape[2:])`` resampled to the
    same size, the one shared head ``h = S.classify`` on both, the :class:`~monai_rd.losses.DenseRDLoss` terms,
    backward and an optimizer step. Everything else is :class:`~monai_rd.engines.RDTrainer`'s: the teacher is frozen
    and kept in eval mode, an optimizer holding its parameters is refused, non-finite losses, gradient norms and
    weights stop training with :class:`~monai_rd.errors.NonFiniteError`, gradient accumulation and clipping, and AMP
    (CUDA autocast with a ``GradScaler``). ``engine.state.output`` holds ``pred`` (student logits, (B, C,
    *spatial)) and ``label`` for MONAI's segmentation metrics and post-transforms, plus ``loss``, ``ce_student``,
    ``ce_teacher`` (the Dice+CE terms), ``kd``, ``cka``, ``alpha`` and ``beta``. Without a teacher and without
    precomputed features the student is trained alone (Dice+CE).

    Args:
        device: device to train on.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image`` and ``label`` (class indices, (B, 1, *spatial)).
        network: the deployable student with ``forward_features`` returning maps and ``classify`` (a
            :class:`~monai_rd.networks.SegmentationStudent`).
        optimizer: optimizer over the student's and Phi's parameters.
        loss_function: a :class:`~monai_rd.losses.DenseRDLoss`.
        teacher: the teacher returning feature maps, or None.
        reprogrammer: a dense Phi (``ReprogrammingNet(..., dense=True)``, or any module called as
            ``phi(features, spatial_size=...)``); required with a teacher.
        kwargs: the other :class:`~monai_rd.engines.RDTrainer` arguments (``teacher_input_key``,
            ``teacher_feature_key``, ``feature_cache``, ``grad_clip_norm``, ``amp``, ``train_handlers``, ...).

    Raises:
        ValueError: the loss is not a DenseRDLoss, Phi is a pooled ReprogrammingNet, or any of RDTrainer's checks.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DenseRDLoss,
        teacher: nn.Module | None = None,
        reprogrammer: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_function, DenseRDLoss):
            raise ValueError(
                "loss_function must be a monai_rd.losses.DenseRDLoss for segmentation, got "
                f"{type(loss_function).__name__}."
            )
        if reprogrammer is not None and getattr(reprogrammer, "dense", True) is False:
            raise ValueError(
                "the reprogrammer pools the teacher's map to a vector; build it with ReprogrammingNet(..., dense=True) "
                "so it returns a map resampled to the student's feature-map size."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            teacher=teacher,
            reprogrammer=reprogrammer,
            **kwargs,
        )

    def _iteration(self, engine: DenseRDTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        # RDTrainer's iteration with the dense forward: Phi needs the student map's size, known only after S runs
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        feats_t = engine.teacher_features(batchdata, inputs)
        if feats_t is not None and engine.reprogrammer is None:
            raise ValueError("the batch carries teacher features but the trainer has no reprogrammer (Phi).")
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        loss_fn: DenseRDLoss = engine.loss_function  # type: ignore[assignment]

        def _compute() -> None:
            f_s = engine.network.forward_features(inputs)
            logits_s = engine.network.classify(f_s)
            f_t = logits_t = None
            if feats_t is not None:
                f_t = engine.reprogrammer(feats_t, spatial_size=tuple(f_s.shape[2:]))  # type: ignore[misc]
                logits_t = engine.network.classify(f_t)
            engine.state.output[Keys.PRED] = logits_s
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output.update(loss_fn(logits_s, targets, logits_t, f_s, f_t))
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        should_zero_grad, should_step = engine._accumulation_flags(engine)
        acc = engine.accumulation_steps
        engine.network.train()
        if engine.reprogrammer is not None:
            engine.reprogrammer.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_scaler = engine.amp and engine.scaler is not None
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
                if not use_scaler:
                    engine._check_finite_grad_norm(total_norm, batchdata, inputs)
            if use_scaler:
                engine.scaler.step(engine.optimizer)  # type: ignore[union-attr]
                engine.scaler.update()  # type: ignore[union-attr]
            else:
                engine.optimizer.step()
            engine._check_finite_weights(batchdata, inputs)
        engine.state.output["alpha"] = torch.tensor(loss_fn.alpha)
        engine.state.output["beta"] = torch.tensor(loss_fn.beta)
        for k in RD_OUTPUT_KEYS[:5]:
            engine.state.output[k] = engine.state.output[k].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
