"""A loss weight that goes linearly from a start to an end value over the training run."""

from __future__ import annotations

import functools

import torch.nn as nn
from ignite.engine import Events
from monai.handlers import ParamSchedulerHandler

__all__ = ["LinearLossWeight"]


class LinearLossWeight(ParamSchedulerHandler):
    """MONAI's ``ParamSchedulerHandler`` for one weight of a loss (an attribute such as RD's ``alpha`` or ``beta``).

    The weight goes linearly from ``start`` to ``end`` over ``steps`` iterations and is set before every iteration
    from the trainer's iteration count, so a resumed run continues the same schedule.

    Args:
        loss: the loss whose attribute is set.
        name: the attribute (``"alpha"``, ``"beta"``, ...); also the handler's name.
        start: the value at the first iteration.
        end: the value from iteration ``steps`` on.
        steps: iterations of the whole run (epochs x iterations per epoch).

    Raises:
        AttributeError: the loss has no such attribute (a typo would otherwise set a new, unused one).
    """

    def __init__(self, loss: nn.Module, name: str, start: float, end: float, steps: int) -> None:
        if not hasattr(loss, name):
            raise AttributeError(f"{type(loss).__name__} has no weight {name!r} to schedule.")
        super().__init__(
            parameter_setter=functools.partial(setattr, loss, name),
            value_calculator="linear",
            vc_kwargs={"initial_value": start, "max_value": end, "step_constant": 0, "step_max_value": steps},
            epoch_level=False,
            name=name,
            event=Events.ITERATION_STARTED,
        )
        self.name = name
