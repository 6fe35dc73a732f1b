"""Fixtures shared by the network tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def assert_gradients_stop_at_stage():
    """A check that after a loss on ``model.forward_from(i, ...)`` the modules of stages <= i have no gradient and
    every later stage has some (``model.stage_modules(k)``)."""

    def check(model, i: int, num_stages: int) -> None:
        for k in range(num_stages):
            grads = [p.grad for m in model.stage_modules(k) for p in m.parameters()]
            if k <= i:
                assert all(g is None for g in grads), f"stage {k} got a gradient from the hybrid path {i}"
            else:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), f"stage {k} got none from path {i}"

    return check
