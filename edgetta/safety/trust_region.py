"""Trust region on the trainable parameters (edgetta rail; no single paper, in the spirit of EATA's anchor).

All trainable parameters are concatenated into one vector. Two relative bounds, applied in ``after_update``:

* step: ||p - theta|| / ||theta|| <= ``max_step`` (default 0.01); a longer step is scaled down along its
  direction, p <- theta + (p - theta) * r / ||p - theta|| with r = max_step ||theta||;
* distance: ||p - theta0|| / ||theta0|| <= ``max_distance`` (default 0.1); a proposal outside the ball is
  projected back onto it, p <- theta0 + (p - theta0) * r / ||p - theta0|| with r = max_distance ||theta0||.

The step bound is applied first; projecting onto the ball never lengthens a step that starts inside it.
Defaults are heuristics: norm-affine gammas sit near 1, so ||theta0|| ~ sqrt(#gammas); Tent/EATA steps
(Adam 1e-3, SGD 2.5e-4) move it by ~1e-3 relative, and healthy adaptation stays well within 10%. A zero
reference norm falls back to absolute bounds. Non-finite values are left to ``nonfinite_guard``.
"""

from __future__ import annotations

import numpy as np

from edgetta.errors import ConfigError
from edgetta.safety._common import check_number, update_applies
from edgetta.safety.base import Rail, StepContext, Target

__all__ = ["TrustRegion"]


def _norm_or_one(vector: np.ndarray) -> float:
    norm = float(np.linalg.norm(vector))
    return norm if norm > 0.0 else 1.0


class TrustRegion(Rail):
    """Bound the per-step change and the distance from the source; emit "clip" with before/after figures."""

    name = "trust_region"
    acts_on = frozenset({Target.PROPOSAL})

    def __init__(self, max_distance: float | None = 0.1, max_step: float | None = 0.01) -> None:
        if max_distance is None and max_step is None:
            raise ConfigError(f"{self.name}: max_distance and max_step are both None; enable at least one")
        self.max_distance = (
            None
            if max_distance is None
            else check_number(self.name, "max_distance", max_distance, low=0.0, low_open=True)
        )
        self.max_step = (
            None if max_step is None else check_number(self.name, "max_step", max_step, low=0.0, low_open=True)
        )

    def after_update(self, ctx: StepContext) -> None:
        proposed = ctx.proposed
        if proposed is None or not update_applies(ctx):
            return
        keys = [k for k in proposed if k in ctx.params and k in ctx.source]
        if not keys:
            return
        flat = [np.asarray(proposed[k], dtype=np.float64).ravel() for k in keys]
        p = np.concatenate(flat)
        theta = np.concatenate([np.asarray(ctx.params[k], dtype=np.float64).ravel() for k in keys])
        theta0 = np.concatenate([np.asarray(ctx.source[k], dtype=np.float64).ravel() for k in keys])
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(theta))):
            return
        clipped = False
        if self.max_step is not None:
            ref = _norm_or_one(theta)
            step = float(np.linalg.norm(p - theta)) / ref
            if step > self.max_step:
                p = theta + (p - theta) * (self.max_step / step)
                clipped = True
                ctx.emit(
                    self.name,
                    "clip",
                    f"relative step {step:.4g} scaled down to {self.max_step:g}",
                    bound="step",
                    before=step,
                    after=self.max_step,
                    limit=self.max_step,
                )
        if self.max_distance is not None:
            ref0 = _norm_or_one(theta0)
            distance = float(np.linalg.norm(p - theta0)) / ref0
            if distance > self.max_distance:
                p = theta0 + (p - theta0) * (self.max_distance / distance)
                clipped = True
                ctx.emit(
                    self.name,
                    "clip",
                    f"relative distance from source {distance:.4g} projected to {self.max_distance:g}",
                    bound="distance",
                    before=distance,
                    after=self.max_distance,
                    limit=self.max_distance,
                )
        if clipped:
            offset = 0
            for key, part in zip(keys, flat):
                original = np.asarray(proposed[key])
                proposed[key] = p[offset : offset + part.size].reshape(original.shape).astype(original.dtype)
                offset += part.size
