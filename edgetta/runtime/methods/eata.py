"""EATA (Niu et al., ICML 2022): entropy minimisation on reliable, non-redundant samples, weighted by
confidence, with Fisher anti-forgetting (the ``fisher_anchor`` rail).

- reliability (Eq. 3): keep sample i iff H_i < E0, E0 = e0_fraction * ln C (0.4 ln C by default);
- redundancy (Eq. 6-7): keep iff |cos(m, p_i)| < eps, m an EMA (0.9) of selected mean probabilities;
  eps defaults to eps_scale / sqrt(C) with eps_scale = sqrt(2): a confident prediction of a class-balanced
  stream has cos(m, p) ~ 1/sqrt(C), so a sample is redundant when its cosine exceeds sqrt(2) times that.
  The rule gives 0.447 for C = 10 and 0.0447 for C = 1000, against the paper's 0.4 (CIFAR-10) and 0.05
  (ImageNet); a fixed ``eps`` overrides it;
- weight (Eq. 8): S_i = 1 / exp(H_i - E0), no gradient through S; loss = mean over kept of S_i H_i;
- no step when no sample survives (the saving in backward passes the paper reports).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.kernels import RedundancyFilter
from edgetta.runtime.methods.base import GradientMethod
from edgetta.safety.base import StepContext


class Eata(GradientMethod):
    name = "eata"
    preview = True

    def __init__(
        self,
        e0: float | None = None,
        e0_fraction: float = 0.4,
        eps: float | None = None,
        eps_scale: float = math.sqrt(2.0),
        redundancy_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.e0_value, self.e0_fraction = e0, float(e0_fraction)
        if (eps is not None and eps <= 0) or eps_scale <= 0:
            raise ValueError(f"eps and eps_scale must be positive, got {eps}, {eps_scale}")
        self.eps_value, self.eps_scale = eps, float(eps_scale)
        self.redundancy = RedundancyFilter(eps=float(eps or 1.0), momentum=float(redundancy_momentum))

    def e0(self, num_classes: int) -> float:
        return float(self.e0_value) if self.e0_value is not None else self.e0_fraction * math.log(num_classes)

    def eps(self, num_classes: int) -> float:
        """The redundancy threshold: ``eps`` when given, else eps_scale / sqrt(C)."""
        return float(self.eps_value) if self.eps_value is not None else self.eps_scale / math.sqrt(num_classes)

    def select(self, ctx: StepContext) -> None:
        e0 = self.e0(ctx.num_classes)
        self.redundancy.eps = self.eps(ctx.num_classes)
        reliable = np.flatnonzero(ctx.entropy < e0)
        keep = np.zeros(len(ctx.entropy), dtype=bool)
        if reliable.size:
            distinct = self.redundancy.mask(ctx.probs[reliable])
            keep[reliable[distinct]] = True
            if keep.any():
                self.redundancy.update(ctx.probs[keep])
        n = int(keep.sum())
        dropped = len(keep) - n
        if dropped:
            ctx.emit(
                self.name,
                "gate",
                "unreliable or redundant samples excluded",
                kept=n,
                unreliable=int(len(keep) - reliable.size),
                redundant=int(reliable.size - n),
                e0=round(e0, 4),
                eps=round(self.redundancy.eps, 4),
            )
        coeff = np.exp(-(ctx.entropy.astype(np.float64) - e0))
        ctx.weights = np.where(keep, coeff / max(n, 1), 0.0).astype(np.float32)
        if n == 0:
            ctx.skip_update = True

    def method_state(self):
        tensors, meta = super().method_state()
        tensors.update({f"eata/{k}": v for k, v in self.redundancy.state().items()})
        return tensors, meta

    def load_method_state(self, tensors, meta) -> None:
        super().load_method_state(tensors, meta)
        self.redundancy.load_state({k[len("eata/") :]: v for k, v in tensors.items() if k.startswith("eata/")})
