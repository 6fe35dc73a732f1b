"""Adapting the teacher to the task before it is used frozen: the ``finetune``, ``lora`` and ``lora_kd`` baselines.

A training stage of its own, run in the recipe's ``initialize`` before the feature cache is built and the student
is trained (the student's :class:`~monai_rd.engines.RDTrainer` keeps refusing to train teacher parameters).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import Loss
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.transforms import Compose, EnsureTyped

from monai_rd.handlers.non_finite_guard import NonFiniteGuard
from monai_rd.handlers.output_transforms import stacked_from_engine
from monai_rd.networks.adapted_teacher import AdaptedTeacherClassifier
from monai_rd.networks.linear_probe import fit_teacher_probe

__all__ = ["adapt_teacher"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _run_rng_kept() -> Iterator[None]:
    """Run the block on forked torch/NumPy/Python RNGs: the stage draws no random numbers of the run, so the student
    starts, shuffles and augments exactly as in the methods without it."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def adapt_teacher(
    classifier: AdaptedTeacherClassifier,
    datalist: Mapping[str, Sequence[Mapping]],
    transform: Callable,
    augmentation: Sequence[Callable] = (),
    epochs: int = 10,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    probe_first: bool = True,
) -> AdaptedTeacherClassifier:
    """Adapt the teacher and its linear head on ``datalist['training']``, keep the best on ``['validation']``, freeze.

    LP-FT (Kumar et al., ICLR 2022): the head is first fitted as the teacher's linear probe
    (:func:`~monai_rd.networks.linear_probe.fit_teacher_probe`; with LoRA's zero-initialised ``lora_B`` the teacher
    is still the original then), so the end-to-end stage starts from a good head and distorts the features less.
    Then MONAI's :class:`~monai.engines.SupervisedTrainer` trains the adapted parameters (all teacher weights for
    ``finetune``, the LoRA adapters for ``lora``) and the head with AdamW and a cosine schedule, on the training
    images through ``transform`` and ``augmentation``; before the first epoch and after every epoch a
    :class:`~monai.engines.SupervisedEvaluator` measures the validation loss, and the state with the lowest one
    (the criterion the probe uses to choose its weight decay) is restored at the end: epoch 0, the linear probe on
    the unadapted teacher, when no adapted epoch beats it. The test split is
    never read. The stage runs on forked RNGs and a copy of ``augmentation``, so the student's training afterwards
    draws the same random numbers as with the other methods.

    Args:
        classifier: the teacher and head to adapt, in place.
        datalist: ``training`` and ``validation`` lists of items (``image``, ``label``).
        transform: deterministic item -> image transform (the bundle's base transforms).
        augmentation: random transforms applied after it on training images (copied, not consumed).
        epochs: adaptation epochs.
        lr: AdamW learning rate (``--teacher_lr``).
        weight_decay: AdamW weight decay.
        batch_size: batch size.
        num_workers: data-loading workers.
        device: where to train.
        amp: mixed precision.
        probe_first: fit the head as the linear probe first (LP-FT); False starts from the head as given.

    Returns:
        ``classifier``, adapted and frozen (:meth:`AdaptedTeacherClassifier.freeze`).

    Raises:
        ValueError: an empty training or validation split.
    """
    for split in ("training", "validation"):
        if not datalist.get(split):
            raise ValueError(f"adapting the teacher needs a non-empty {split!r} split in the datalist.")
    with _run_rng_kept():
        if probe_first:
            fit_teacher_probe(classifier.probe, classifier.teacher, datalist, transform, device=device)
        classifier.to(device).start_adaptation()
        tensors = EnsureTyped(keys="image", track_meta=False)
        train_loader = DataLoader(
            CacheDataset(datalist["training"], Compose([transform, tensors, *copy.deepcopy(list(augmentation))]),
                         num_workers=num_workers, progress=False),
            batch_size=min(batch_size, len(datalist["training"])), shuffle=True, num_workers=num_workers,
        )
        val_loader = DataLoader(
            CacheDataset(
                datalist["validation"], Compose([transform, tensors]), num_workers=num_workers, progress=False
            ),
            batch_size=batch_size, shuffle=False, num_workers=num_workers,
        )
        loss_fn: nn.Module = nn.BCEWithLogitsLoss() if classifier.probe.multi_label else nn.CrossEntropyLoss()
        params = [*classifier.adapted_parameters(), *classifier.probe.parameters()]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        evaluator = SupervisedEvaluator(
            device=device, val_data_loader=val_loader, network=classifier, amp=amp, decollate=False,
            key_val_metric={"val_loss": Loss(loss_fn, output_transform=stacked_from_engine(["pred", "label"]))},
            metric_cmp_fn=lambda current, best: current < best,
        )
        best: dict[str, torch.Tensor] = {}
        started = [False]

        @evaluator.on(Events.EPOCH_COMPLETED)
        def _keep_best(engine: SupervisedEvaluator) -> None:  # after MONAI's key-metric bookkeeping
            if not started[0]:  # the run before training: epoch 0, the linear probe on the unadapted teacher
                engine.state.best_metric_epoch = engine.state.epoch = 0
            if engine.state.best_metric_epoch == engine.state.epoch:
                best.clear()
                best.update({k: v.detach().clone() for k, v in classifier.state_dict().items()})
            logger.info(
                f"teacher adaptation ({classifier.mode}): epoch {engine.state.epoch}/{epochs}, validation loss "
                f"{engine.state.metrics['val_loss']:.4f} (best {engine.state.best_metric:.4f} at epoch "
                f"{engine.state.best_metric_epoch})"
            )

        trainer = SupervisedTrainer(
            device=device, max_epochs=epochs, train_data_loader=train_loader, network=classifier,
            optimizer=optimizer, loss_function=loss_fn, amp=amp, decollate=False,
            train_handlers=[LrScheduleHandler(scheduler, print_lr=False),
                            ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
        )
        NonFiniteGuard({"teacher": classifier}, stage=f"the teacher ({classifier.mode} adaptation)").attach(trainer)
        evaluator.run()  # epoch 0: adapting must beat the linear probe it starts from, or it is undone
        started[0] = True
        trainer.run()
        classifier.load_state_dict(best)
    classifier.freeze()
    logger.info(
        f"teacher adapted ({classifier.mode}, {sum(p.numel() for p in params)} trained parameters) on "
        f"{len(datalist['training'])} training images; epoch {evaluator.state.best_metric_epoch} kept"
    )
    return classifier
