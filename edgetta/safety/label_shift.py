"""Label-shift guard: normalise label-correlated batches with robust BN statistics instead of their own.

A batch dominated by one class (a camera on an empty corridor, one patient's N2-rich stretch) has BN
statistics that carry the class signal: normalising with them erases it before any gradient (benchmark
label-sorted stream: frozen 31.1% error, BN-1 79.4%). Gradient-level rails cannot help; this rail acts
before the forward pass (``Target.STATISTICS``).

Per batch it compares two forwards of ``infer.onnx``: at the method's statistics (test-batch, bn_alpha)
and at robust statistics (bn_alpha = 0 with the rail's robust running statistics). Entropy is the
unsupervised proxy of error that Tent (Wang et al., ICLR 2021) minimises: on a covariate-shifted i.i.d.
batch the batch's own statistics *lower* the mean entropy (the correction BN adapt makes, Schneider et al.
2020); on a label-correlated batch they *raise* it sharply (the class signal is normalised away). The batch
is declared label-correlated when

    mean_i H_i(batch stats) - mean_i H_i(robust stats) > margin_fraction * ln C,

and then its predictions come from the robust forward and it does not update the model (its statistics
and its gradient are both untrusted). Otherwise the batch's own forward is kept (and reused by the method).

Robust statistics follow RoTTA's robust BN (Yuan et al., CVPR 2023, Eq. 4-5): global statistics updated
by an EMA of batch statistics, mu <- (1-m) mu + m mu_batch, var <- (1-m) var + m var_batch, m = 0.05,
starting from the source running statistics, here updated only from batches the test trusts (RoTTA
updates from every batch of its category-balanced memory). ``momentum: 0`` uses the model's own running
statistics instead. Cost: one extra forward per batch. Events: "statistics" for each replaced batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.kernels import entropy as entropy_of
from edgetta.safety._common import check_number
from edgetta.safety.base import RESET_SOURCE, Rail, RailEnv, RailUnavailable, StatisticsContext, Target

__all__ = ["LabelShiftGuard"]

LOGITS = "logits"


class LabelShiftGuard(Rail):
    """Robust statistics for label-correlated batches (entropy test above; RoTTA robust-BN EMA)."""

    name = "label_shift_guard"
    acts_on = frozenset({Target.STATISTICS})
    optional = True  # a model without BatchNorm has no batch statistics to distrust

    def __init__(self, margin_fraction: float = 0.03, momentum: float = 0.05) -> None:
        self.margin_fraction = check_number(self.name, "margin_fraction", margin_fraction, low=0.0)
        self.momentum = check_number(self.name, "momentum", momentum, low=0.0, high=1.0)
        self.layers: tuple[tuple[str, str, str, str], ...] = ()
        self.robust: dict[str, np.ndarray] = {}
        self.source: dict[str, np.ndarray] = {}
        self.margin = 0.0
        self.replaced = 0

    def bind(self, env: RailEnv) -> None:
        if not env.running_stats:
            raise RailUnavailable(f"{self.name}: the model has no BatchNorm running statistics; nothing to guard")
        self.layers = env.running_stats
        self.source = {k: env.source[k].copy() for rm, rv, _, _ in self.layers for k in (rm, rv)}
        self.robust = {k: v.copy() for k, v in self.source.items()}
        self.margin = self.margin_fraction * math.log(env.num_classes)

    def choose_statistics(self, ctx: StatisticsContext) -> None:
        own = ctx.own()
        robust = ctx.forward(0.0, self.robust if self.momentum > 0 else None)
        h_own = float(np.mean(entropy_of(own[LOGITS])))
        h_robust = float(np.mean(entropy_of(robust[LOGITS])))
        if h_own - h_robust > self.margin:
            self.replaced += 1
            ctx.replace(robust)
            ctx.emit(
                self.name,
                "statistics",
                f"label-correlated batch: its own BN statistics raise the mean entropy from {h_robust:.3f} to "
                f"{h_own:.3f} nats (margin {self.margin:.3f}); normalising with robust statistics, no update",
                entropy_own=h_own,
                entropy_robust=h_robust,
            )
        elif self.momentum > 0:
            m = self.momentum
            for rm, rv, bm, bv in self.layers:
                self.robust[rm] = ((1 - m) * self.robust[rm] + m * own[bm]).astype(np.float32)
                self.robust[rv] = ((1 - m) * self.robust[rv] + m * own[bv]).astype(np.float32)

    def on_reset(self, target: str) -> None:
        if target == RESET_SOURCE:
            self.robust = {k: v.copy() for k, v in self.source.items()}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {k: v.copy() for k, v in self.robust.items()}, {"replaced": self.replaced}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if self.robust and set(tensors) != set(self.robust):
            from edgetta.errors import CheckpointError

            raise CheckpointError(f"{self.name}: saved statistics {sorted(tensors)} do not fit this model")
        self.robust = {k: np.asarray(v, dtype=np.float32).copy() for k, v in tensors.items()}
        self.replaced = int(meta.get("replaced", 0))
