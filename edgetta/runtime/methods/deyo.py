"""DeYO (Lee et al., "Entropy is not Enough for Test-Time Adaptation: From the Perspective of
Disentangled Factors", ICLR 2024): entropy minimisation on samples whose prediction rests on the object.

Per batch, following the paper (Eq. 8-10) and the authors' released ``forward_and_adapt_deyo``:

- entropy filter: keep sample i iff H_i < tau_Ent, tau_Ent = tau_ent_fraction * ln C (0.5 ln C);
- PLPD (Eq. 7): x~ = the kept samples with their 4 x 4 patches shuffled (``edgetta.kernels.patch_shuffle``),
  one forward of x~ alone (BatchNorm: the statistics of the shuffled subset, as the released code's
  train-mode forward of ``x_prime``); PLPD_i = p_y(x_i) - p_y(x~_i), y = argmax p(x_i);
- PLPD filter: keep iff PLPD_i > tau_PLPD (0.2, the released default; the paper uses 0.2-0.3);
- weights (Eq. 10): alpha_i = 1 / exp(H_i - E0) + 1 / exp(-PLPD_i), E0 = e0_fraction * ln C (0.4 ln C),
  no gradient through alpha; loss = mean over the kept samples of alpha_i H_i; no step when none is kept.

Predictions are the pre-update ones. Defaults as released: SGD momentum 0.9, lr 2.5e-4 at batch 64.
Cost per batch: infer(x) for the entropies, infer(x~) on the entropy-kept samples, adapt(x) with the
weights: 3 forward and 1 backward passes (1 forward when no sample passes the entropy filter, 2 when
none passes PLPD).

Differences from the released code: permutations come from a seeded numpy generator (``seed``; its state
is checkpointed) instead of ``torch.rand``; images whose side is not a multiple of ``patch_grid`` keep
their border rows/columns in place instead of being resized to a multiple and back; only the ``patch``
transformation is offered (the released code also has pixel shuffling and occlusion, off by default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.contract import LOGITS
from edgetta.errors import ConfigError
from edgetta.kernels import softmax
from edgetta.kernels.patch_shuffle import patch_permutations, patch_shuffle
from edgetta.runtime.methods.base import GradientMethod, StepOutput
from edgetta.safety.base import StepContext


class Deyo(GradientMethod):
    name = "deyo"
    preview = True

    def __init__(
        self,
        tau_ent: float | None = None,
        tau_ent_fraction: float = 0.5,
        e0: float | None = None,
        e0_fraction: float = 0.4,
        tau_plpd: float = 0.2,
        patch_grid: int = 4,
        reweight_ent: bool = True,
        reweight_plpd: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(patch_grid, bool) or int(patch_grid) != patch_grid or patch_grid < 1:
            raise ConfigError(f"method_args.patch_grid must be an integer >= 1 (4 in the paper), got {patch_grid}")
        if not -1.0 <= tau_plpd < 1.0:
            raise ConfigError(f"method_args.tau_plpd must lie in [-1, 1) (a probability difference), got {tau_plpd}")
        self.tau_ent_value, self.tau_ent_fraction = tau_ent, float(tau_ent_fraction)
        self.e0_value, self.e0_fraction = e0, float(e0_fraction)
        self.tau_plpd, self.patch_grid = float(tau_plpd), int(patch_grid)
        self.reweight_ent, self.reweight_plpd = bool(reweight_ent), bool(reweight_plpd)
        self.rng = np.random.default_rng(int(seed))
        self._x: np.ndarray | None = None
        self._shuffled_forwards = 0

    def tau_ent(self, num_classes: int) -> float:
        if self.tau_ent_value is not None:
            return float(self.tau_ent_value)
        return self.tau_ent_fraction * math.log(num_classes)

    def e0(self, num_classes: int) -> float:
        return float(self.e0_value) if self.e0_value is not None else self.e0_fraction * math.log(num_classes)

    def step(self, x: np.ndarray, batch_index: int, update: bool = True) -> StepOutput:
        self._x, self._shuffled_forwards = x, 0
        try:
            out = super().step(x, batch_index, update)
        finally:
            self._x = None
        out.forward_passes += self._shuffled_forwards
        return out

    def plpd(self, x: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """PLPD (Eq. 7) of each row of ``x`` given its predicted probabilities: one forward of the
        patch-shuffled rows (together, as one batch)."""
        grid = self.patch_grid
        perms = patch_permutations(self.rng, len(x), grid ** (x.ndim - 2))
        shuffled = patch_shuffle(x, grid, perms)
        logits = self.engine.infer(shuffled, self.state.params, self.bn_alpha, outputs=[LOGITS])[LOGITS]
        self._shuffled_forwards += 1
        y = np.argmax(probs, axis=1)
        rows = np.arange(len(x))
        return (probs[rows, y].astype(np.float64) - softmax(logits)[rows, y].astype(np.float64)).astype(np.float32)

    def select(self, ctx: StepContext) -> None:
        n = len(ctx.entropy)
        reliable = np.flatnonzero(ctx.entropy < self.tau_ent(ctx.num_classes))
        weights = np.zeros(n, np.float32)
        kept = 0
        if reliable.size and self._x is not None:
            plpd = self.plpd(self._x[reliable], ctx.probs[reliable])
            keep = plpd > self.tau_plpd
            kept = int(keep.sum())
            if kept:
                ids, d = reliable[keep], plpd[keep].astype(np.float64)
                h = ctx.entropy[ids].astype(np.float64)
                coeff = np.zeros(kept)
                if self.reweight_ent:
                    coeff += np.exp(-(h - self.e0(ctx.num_classes)))
                if self.reweight_plpd:
                    coeff += np.exp(d)
                if not (self.reweight_ent or self.reweight_plpd):
                    coeff += 1.0
                weights[ids] = coeff / kept
        if kept < n:
            ctx.emit(
                self.name,
                "gate",
                "samples excluded by entropy or PLPD",
                kept=kept,
                reliable=int(reliable.size),
                low_plpd=int(reliable.size - kept),
            )
        ctx.weights = weights
        if kept == 0:
            ctx.skip_update = True

    def method_state(self):
        tensors, meta = super().method_state()
        return tensors, {**meta, "deyo": {"rng": self.rng.bit_generator.state}}

    def load_method_state(self, tensors, meta) -> None:
        super().load_method_state(tensors, meta)
        rng = (meta.get("deyo") or {}).get("rng")
        if rng is not None:
            self.rng.bit_generator.state = rng
