"""SAR (Niu et al., ICLR 2023): sharpness-aware and reliable entropy minimisation, as published.

Per batch (paper Alg. 1; the authors' released ``forward_and_adapt_sar`` and its SAM optimiser):

- reliable filter (Eq. 2): keep sample i iff H_i < E0, E0 = e0_fraction * ln C (0.4 ln C);
- SAM (Eq. 4-5, Foret et al. 2021): g = grad of the mean entropy over the kept samples at theta,
  e = rho g / (||g|| + 1e-12) (rho = 0.05), second forward at theta + e, filter again among the samples
  kept at theta (H_i(theta + e) < E0), step the base optimiser from theta with the gradient of the mean
  entropy over the samples that pass both filters, taken at theta + e;
- model recovery (Sec. 4, Eq. 6): ema <- 0.9 ema + 0.1 L2 with L2 that second loss (ema = L2 the first
  time; skipped when no sample passes both filters), checked after every batch: ema < 0.2 -> reset the
  norm parameters to the source.

Like the released code (documented because each one changes the trajectory):

- a batch where no sample passes a filter still steps the optimiser with a zero gradient, so SGD
  momentum alone moves the weights (the released code backpropagates the mean of an empty selection,
  which gives zero gradients, and calls the base optimiser's step regardless);
- the recovery keeps the optimiser's momentum (the released reset reloads the SAM wrapper's state, not
  the base SGD's momentum buffers) and keeps the EMA (the released ``SAR.forward`` stores the EMA back
  after ``reset()`` cleared it), so a model whose EMA stays below the threshold resets on consecutive
  batches until the EMA climbs back.

Deliberate differences: a reset asked by anything else (a rail, the user, an episodic stream) clears
the momentum and the EMA, as every other method's reset does; ``recovery_threshold`` = 0 turns the
recovery off (the released code hard-codes 0.2). The recovery event is ``sar``/``reset``.
Cost per batch: infer(theta), adapt(theta), infer(theta + e), adapt(theta + e), i.e. 4 forward and
2 backward passes (1 forward when no sample is reliable; 3 forward and 1 backward when none stays
reliable at theta + e).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.contract import LOGITS, LOSS
from edgetta.errors import ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.runtime.methods.base import GradientMethod, StepOutput
from edgetta.safety.base import RESET_SOURCE, Event, StepContext


class Sar(GradientMethod):
    name = "sar"
    preview = True
    steps_without_samples = True

    def __init__(
        self,
        e0: float | None = None,
        e0_fraction: float = 0.4,
        rho: float = 0.05,
        recovery_threshold: float = 0.2,
        recovery_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if rho < 0:
            raise ConfigError(f"method_args.rho must be >= 0, got {rho}")
        if recovery_threshold < 0:
            raise ConfigError(
                f"method_args.recovery_threshold must be >= 0 (0 turns recovery off), got {recovery_threshold}"
            )
        if not 0.0 <= recovery_momentum < 1.0:
            raise ConfigError(f"method_args.recovery_momentum must lie in [0, 1), got {recovery_momentum}")
        self.e0_value, self.e0_fraction, self.rho = e0, float(e0_fraction), float(rho)
        self.recovery_threshold, self.recovery_momentum = float(recovery_threshold), float(recovery_momentum)
        self.ema: float | None = None  # EMA of the loss at theta + e (the recovery signal)
        self._recovering = False

    def e0(self, num_classes: int) -> float:
        return float(self.e0_value) if self.e0_value is not None else self.e0_fraction * math.log(num_classes)

    def select(self, ctx: StepContext) -> None:
        keep = ctx.entropy < self.e0(ctx.num_classes)
        n = int(keep.sum())
        if n < len(keep):
            ctx.emit(self.name, "gate", "unreliable samples excluded", kept=n, dropped=int(len(keep) - n))
        ctx.weights = np.where(keep, 1.0 / max(n, 1), 0.0).astype(np.float32)

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        if not np.any(ctx.weights > 0):
            self._momentum_only(ctx, "no reliable sample: the optimiser steps on momentum alone")
            return
        super().gradients(x, ctx, out, outputs)
        norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in ctx.grads.values()))
        if not math.isfinite(norm):
            return  # the non-finite guard rail rejects this step
        scale = self.rho / (norm + 1e-12)
        perturbed = dict(self.state.params)
        for name, g in ctx.grads.items():
            perturbed[name] = (self.state.params[name] + scale * g).astype(np.float32)
        logits2 = self.engine.infer(x, perturbed, self.bn_alpha, outputs=[LOGITS])[LOGITS]
        keep = (ctx.weights > 0) & (entropy_of(logits2) < self.e0(ctx.num_classes))
        out.forward_passes += 1
        n = int(keep.sum())
        if n == 0:
            self._momentum_only(ctx, "no reliable sample at the perturbed point: momentum alone")
            return
        result = self._run_adapt(x, perturbed, np.where(keep, 1.0 / n, 0.0).astype(np.float32))
        out.backward_passes += 1
        ctx.grads, ctx.loss = self._grads(result), float(result[LOSS])
        if math.isfinite(ctx.loss):  # the released code skips a NaN loss
            m = self.recovery_momentum
            self.ema = ctx.loss if self.ema is None else m * self.ema + (1.0 - m) * ctx.loss

    def _momentum_only(self, ctx: StepContext, reason: str) -> None:
        ctx.grads = {name: np.zeros_like(self.state.params[name]) for name in self.adapted_names()}
        ctx.loss = None
        ctx.emit(self.name, "momentum", reason)

    def step(self, x: np.ndarray, batch_index: int, update: bool = True) -> StepOutput:
        out = super().step(x, batch_index, update)
        if update and self.recovery_threshold > 0 and self.ema is not None and self.ema < self.recovery_threshold:
            ema = self.ema
            self._recovering = True
            try:
                self.reset(RESET_SOURCE)
            finally:
                self._recovering = False
            reason = f"loss EMA {ema:.4g} < {self.recovery_threshold:g} (model recovery)"
            data = {"target": RESET_SOURCE, "ema": ema, "threshold": self.recovery_threshold}
            out.events.append(Event(batch_index, self.name, "reset", reason, data))
        return out

    def reset_method_state(self) -> None:
        if not self._recovering:  # the released recovery keeps both (see the module docstring)
            super().reset_method_state()
            self.ema = None

    def method_state(self):
        tensors, meta = super().method_state()
        return tensors, {**meta, "sar": {"ema": self.ema}}

    def load_method_state(self, tensors, meta) -> None:
        super().load_method_state(tensors, meta)
        ema = (meta.get("sar") or {}).get("ema")
        self.ema = None if ema is None else float(ema)
