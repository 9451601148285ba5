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

*and* its deep features lost variance under its own normalisation,

    min_{l in deepest half of the BN layers} mean_c log(var_batch_{l,c} / var_robust_{l,c}) < -variance_drop,

(a batch of one or two classes lacks the between-class variance of the class-specific deep features:
validation label-sorted batches -0.18 to -0.48 at the last block, i.i.d. ones -0.11 to +0.05; a batch
mixing many corruptions raises the entropy without this drop), unless the robust statistics are
themselves untrustworthy for the batch: the fallback is vetoed when,
in the robust forward, the shallowest half of the BN layers sees a batch variance off from the robust
running variance by more than a factor e^max_misfit,

    | mean_{l in shallowest half} mean_c log(var_batch_{l,c} / var_robust_{l,c}) | > max_misfit.

The entropy test alone mistakes a covariate shift on which the source model is confidently wrong (fog,
low contrast: BN raises the mean entropy there because it breaks the source's collapse onto one class)
for label shift. What tells them apart is low-level: shallow features carry little class signal, so a
label-correlated batch leaves their variance near the robust value (validation label-sorted batches:
at most 0.62), while a shift that strong makes the robust statistics misnormalise every layer (the
situation BN adapt was made for; Schneider et al. 2020). A flagged batch gets its predictions from the
robust forward and does not update the model (its statistics and its gradient are both untrusted); a
vetoed or unflagged batch keeps its own forward (reused by the method). Both decisions are events.

Robust statistics follow RoTTA's robust BN (Yuan et al., CVPR 2023, Eq. 4-5): global statistics updated
by an EMA of batch statistics, mu <- (1-m) mu + m mu_batch, var <- (1-m) var + m var_batch, m = 0.05,
starting from the source running statistics, here updated only from batches the test trusts (RoTTA
updates from every batch of its category-balanced memory). ``momentum: 0`` uses the model's own running
statistics instead. Events: "statistics" for each replaced batch,
"statistics_kept" for each vetoed one.

Cost: the deep-variance test needs only the batch's own forward, so it runs first; the robust forward (one
extra infer call) runs only for a batch whose deep variance dropped, which on i.i.d. covariate-shifted
streams is rare.
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
EPS = 1e-5


def mean_log_ratio(var: np.ndarray, reference: np.ndarray) -> float:
    """mean_c log(var_c / reference_c), in float64 with a small floor."""
    return float(np.mean(np.log((var.astype(np.float64) + EPS) / (reference.astype(np.float64) + EPS))))


class LabelShiftGuard(Rail):
    """Robust statistics for label-correlated batches (entropy test above; RoTTA robust-BN EMA)."""

    name = "label_shift_guard"
    acts_on = frozenset({Target.STATISTICS})
    optional = True  # a model without BatchNorm has no batch statistics to distrust

    def __init__(
        self,
        margin_fraction: float = 0.03,
        momentum: float = 0.05,
        variance_drop: float = 0.1,
        max_misfit: float = 0.75,
    ) -> None:
        self.variance_drop = check_number(self.name, "variance_drop", variance_drop, low=0.0)
        self.margin_fraction = check_number(self.name, "margin_fraction", margin_fraction, low=0.0)
        self.momentum = check_number(self.name, "momentum", momentum, low=0.0, high=1.0)
        self.max_misfit = check_number(self.name, "max_misfit", max_misfit, low=0.0)
        self.layers: tuple[tuple[str, str, str, str], ...] = ()
        self.shallow: tuple[tuple[str, str, str, str], ...] = ()
        self.deep: tuple[tuple[str, str, str, str], ...] = ()
        self.robust: dict[str, np.ndarray] = {}
        self.source: dict[str, np.ndarray] = {}
        self.margin = 0.0
        self.replaced = 0

    def bind(self, env: RailEnv) -> None:
        if not env.running_stats:
            raise RailUnavailable(f"{self.name}: the model has no BatchNorm running statistics; nothing to guard")
        self.layers = env.running_stats
        self.shallow = self.layers[: max(1, len(self.layers) // 2)]  # graph order: the shallowest half
        self.deep = self.layers[len(self.layers) // 2 :]  # and the deepest half
        self.source = {k: env.source[k].copy() for rm, rv, _, _ in self.layers for k in (rm, rv)}
        self.robust = {k: v.copy() for k, v in self.source.items()}
        self.margin = self.margin_fraction * math.log(env.num_classes)

    def choose_statistics(self, ctx: StatisticsContext) -> None:
        own = ctx.own()
        reference = self.robust if self.momentum > 0 else ctx.params
        drop = self.deep_variance_change(own, reference)
        if drop >= -self.variance_drop:  # no deep variance drop: not label-correlated, no robust forward needed
            self.update_robust(own)
            return
        robust = ctx.forward(0.0, self.robust if self.momentum > 0 else None)
        h_own = float(np.mean(entropy_of(own[LOGITS])))
        h_robust = float(np.mean(entropy_of(robust[LOGITS])))
        flagged = h_own - h_robust > self.margin
        misfit = self.misfit(robust, reference) if flagged else 0.0
        if misfit > self.max_misfit:
            ctx.emit(
                self.name,
                "statistics_kept",
                f"batch statistics kept: they raise the mean entropy from {h_robust:.3f} to {h_own:.3f} nats and lower "
                f"the deep-layer variance (log ratio {drop:.2f}), but the "
                f"robust statistics misfit the shallow layers (mean log variance ratio {misfit:.2f} > "
                f"{self.max_misfit:g}): a strong covariate shift, not a label-correlated batch",
                entropy_own=h_own,
                entropy_robust=h_robust,
                log_variance_ratio=drop,
                misfit=misfit,
            )
            self.update_robust(own)
        elif flagged:
            self.replaced += 1
            ctx.replace(robust)
            ctx.emit(
                self.name,
                "statistics",
                f"label-correlated batch: its own BN statistics raise the mean entropy from {h_robust:.3f} to "
                f"{h_own:.3f} nats (margin {self.margin:.3f}) and its deep-layer variance by a log ratio of {drop:.2f} "
                f"(limit {-self.variance_drop:g}); normalising with robust statistics, no update",
                entropy_own=h_own,
                entropy_robust=h_robust,
                log_variance_ratio=drop,
                misfit=misfit,
            )
        else:
            self.update_robust(own)

    def deep_variance_change(self, own: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
        """min over the deepest half of the BN layers of mean_c log(var_batch / var_robust), own forward."""
        return min(mean_log_ratio(own[bv], reference[rv]) for _, rv, _, bv in self.deep)

    def misfit(self, robust: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
        """|mean over the shallowest half of the BN layers of mean_c log(var_batch / var_robust)|, robust forward."""
        return abs(float(np.mean([mean_log_ratio(robust[bv], reference[rv]) for _, rv, _, bv in self.shallow])))

    def update_robust(self, own: dict[str, np.ndarray]) -> None:
        """RoTTA robust-BN EMA (Eq. 4-5) from a trusted batch's own statistics."""
        if self.momentum <= 0:
            return
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
