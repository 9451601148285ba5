"""Non-finite guard: a step whose loss, gradients or new parameters are not finite is discarded.

``on_gradients``: a non-finite loss or gradient skips the update. ``after_update``: a non-finite proposed
value rejects the update, so the parameters stay at the last good state. Each event names the first
offending tensor (in dict order) and how many of its elements are bad.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgetta.safety.base import Rail, StepContext, Target

__all__ = ["NonfiniteGuard"]


def _first_nonfinite(tensors: Mapping[str, np.ndarray]) -> tuple[str, int, int] | None:
    """(name, bad element count, size) of the first tensor holding a NaN or an infinity, else None."""
    for key, value in tensors.items():
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.inexact):
            continue
        finite = np.isfinite(arr)
        if not finite.all():
            return key, int(arr.size - np.count_nonzero(finite)), int(arr.size)
    return None


class NonfiniteGuard(Rail):
    """Skip steps with a non-finite loss or gradient; reject non-finite proposed parameters."""

    name = "nonfinite_guard"
    acts_on = frozenset({Target.GRADIENTS, Target.PROPOSAL})
    guard = True

    def on_gradients(self, ctx: StepContext) -> None:
        if ctx.loss is not None and not math.isfinite(float(ctx.loss)):
            ctx.skip_update = True
            ctx.emit(self.name, "skip", f"loss is {float(ctx.loss)}", tensor="loss")
            return
        bad = _first_nonfinite(ctx.grads or {})
        if bad is not None:
            key, count, size = bad
            ctx.skip_update = True
            ctx.emit(
                self.name,
                "skip",
                f"gradient of {key!r} has {count} non-finite of {size} elements",
                tensor=key,
                nonfinite=count,
                size=size,
            )

    def after_update(self, ctx: StepContext) -> None:
        bad = _first_nonfinite(ctx.proposed or {})
        if bad is not None:
            key, count, size = bad
            ctx.reject_update = True
            ctx.emit(
                self.name,
                "reject",
                f"proposed {key!r} has {count} non-finite of {size} elements",
                tensor=key,
                nonfinite=count,
                size=size,
            )
