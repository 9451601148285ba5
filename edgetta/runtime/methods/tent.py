"""Tent (Wang et al., ICLR 2021): fully test-time adaptation by entropy minimisation.

- minimises the mean prediction entropy of each test batch, (1/N) sum_i H(p_i),
  H(p) = -sum_c p_c log p_c (Eq. 2), over the norm-layer affine parameters (gamma, beta) only;
- keeps every sample, each with weight 1/N;
- normalises with the test batch's statistics (bn_alpha = 1) and takes one optimiser step per batch;
  published settings: SGD, momentum 0.9, lr 2.5e-4 at batch 64 (ImageNet); Adam, lr 1e-3 (CIFAR).
"""

from __future__ import annotations

import numpy as np

from edgetta.runtime.methods.base import GradientMethod
from edgetta.safety.base import StepContext


class Tent(GradientMethod):
    name = "tent"

    def select(self, ctx: StepContext) -> None:
        n = len(ctx.entropy)
        ctx.weights = np.full(n, 1.0 / n, np.float32)
