"""SAR (Niu et al., ICLR 2023): sharpness-aware and reliable entropy minimisation.

- reliable filter: H_i < E0 = e0_fraction * ln C (0.4 ln C), loss = mean entropy over kept samples;
- SAM (Foret et al. 2021) on that loss: g at theta, e = rho g / ||g|| (rho = 0.05), second
  forward/backward at theta + e re-filtered with the entropies there, step from theta with that gradient;
- model recovery (EMA of the loss < 0.2 -> reset) is the ``collapse_guard`` rail of the SAR preset.
Four graph calls per step: infer(theta), adapt(theta), infer(theta + e), adapt(theta + e).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.contract import LOGITS, LOSS
from edgetta.kernels import entropy as entropy_of
from edgetta.runtime.methods.base import GradientMethod, StepOutput
from edgetta.safety.base import StepContext


class Sar(GradientMethod):
    name = "sar"
    preview = True

    def __init__(self, e0: float | None = None, e0_fraction: float = 0.4, rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.e0_value, self.e0_fraction, self.rho = e0, float(e0_fraction), float(rho)

    def e0(self, num_classes: int) -> float:
        return float(self.e0_value) if self.e0_value is not None else self.e0_fraction * math.log(num_classes)

    def select(self, ctx: StepContext) -> None:
        keep = ctx.entropy < self.e0(ctx.num_classes)
        n = int(keep.sum())
        if n < len(keep):
            ctx.emit(self.name, "gate", "unreliable samples excluded", kept=n, dropped=int(len(keep) - n))
        ctx.weights = np.where(keep, 1.0 / max(n, 1), 0.0).astype(np.float32)
        ctx.skip_update = n == 0

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
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
            ctx.skip_update = True
            ctx.emit(self.name, "skip", "no reliable sample at the perturbed point")
            return
        result = self._run_adapt(x, perturbed, np.where(keep, 1.0 / n, 0.0).astype(np.float32))
        out.backward_passes += 1
        ctx.grads, ctx.loss = self._grads(result), float(result[LOSS])
