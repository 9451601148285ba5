"""EATA Fisher anti-forgetting anchor (Niu et al., ICML 2022, Eq. 9).

R(theta) = beta * sum_j F_j (theta_j - theta0_j)^2 is added to the entropy loss; the adapt graph only
returns the entropy gradient, so ``on_gradients`` adds dR/dtheta = 2 beta F (theta - theta0) in numpy.
F and theta0 come from the artifact (``edgetta export --calib``). Published beta: 2000 (ImageNet),
1 (CIFAR-10), 50 (TTAB default); the default here is 1.

Without a Fisher diagonal in the artifact the rail is dropped with a "downgrade" event and a warning
(EATA then runs without its anti-forgetting term), unless ``required`` is true: then the runtime refuses
to start and says how to export one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.kernels import fisher_penalty, fisher_penalty_grad
from edgetta.safety._common import check_number, opt_float
from edgetta.safety.base import Rail, RailEnv, RailUnavailable, StepContext, Target

__all__ = ["FisherAnchor"]


class FisherAnchor(Rail):
    """Add 2 beta F (theta - theta0) to the gradients of every trainable parameter that has a Fisher entry.

    Not a decision, so no event; the last penalty value R(theta) is kept in ``state()`` meta.
    """

    name = "fisher_anchor"
    acts_on = frozenset({Target.GRADIENTS})

    def __init__(self, beta: float = 1.0, required: bool = False) -> None:
        self.beta = check_number(self.name, "beta", beta, low=0.0)
        if not isinstance(required, bool):
            raise ConfigError(f"{self.name}.required must be true or false, got {required!r}")
        self.required = required
        self.optional = not required
        self._fisher: dict[str, np.ndarray] | None = None
        self._anchor: dict[str, np.ndarray] = {}
        self.last_penalty: float | None = None
        self.anchored = 0

    def bind(self, env: RailEnv) -> None:
        if not env.fisher:
            raise RailUnavailable(
                f"{self.name}: the artifact has no Fisher diagonal; export it with "
                "`edgetta export ... --calib CALIB.npz` (in-distribution inputs) or remove fisher_anchor from rails"
            )
        fisher: dict[str, np.ndarray] = {}
        for key, value in env.fisher.items():
            theta0 = env.anchor.get(key, env.source.get(key))
            if theta0 is None:
                raise ConfigError(f"{self.name}: Fisher entry {key!r} has no anchor or source value in the artifact")
            if np.shape(theta0) != np.shape(value):
                raise ConfigError(
                    f"{self.name}: Fisher {key!r} has shape {np.shape(value)}, its anchor {np.shape(theta0)}"
                )
            fisher[key] = np.asarray(value, dtype=np.float64)
            self._anchor[key] = np.asarray(theta0, dtype=np.float64)
        self._fisher = fisher

    def on_gradients(self, ctx: StepContext) -> None:
        if ctx.grads is None or ctx.skip_update:
            return
        if self._fisher is None:
            raise RuntimeError(f"{self.name}: used before bind()")
        keys = [k for k in self._fisher if k in ctx.grads]
        if not keys:
            raise ConfigError(
                f"{self.name}: none of the Fisher entries ({', '.join(sorted(self._fisher))}) is a trainable "
                f"parameter of this method ({', '.join(sorted(ctx.grads))})"
            )
        params = {k: ctx.params[k] for k in keys}
        anchor = {k: self._anchor[k] for k in keys}
        fisher = {k: self._fisher[k] for k in keys}
        for key, extra in fisher_penalty_grad(params, anchor, fisher, self.beta).items():
            grad = np.asarray(ctx.grads[key])
            ctx.grads[key] = (grad + extra).astype(grad.dtype, copy=False)
        self.last_penalty = fisher_penalty(params, anchor, fisher, self.beta)
        self.anchored = len(keys)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"last_penalty": opt_float(self.last_penalty), "anchored": self.anchored}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        penalty = meta.get("last_penalty")
        self.last_penalty = None if penalty is None else float(penalty)
        self.anchored = int(meta.get("anchored", 0))
