"""Entropy gates: per-sample reliability (EATA/SAR) and batch-level pausing (StableSleep).

Gates act in ``before_update``. They never drop predictions; they only decide which samples (or
whether the batch at all) feed the parameter update.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.safety._common import batch_mean_entropy, check_choice, check_number, opt_float
from edgetta.safety.base import Rail, RailEnv, StepContext, Target

__all__ = ["BatchEntropyGate", "DiversityGate", "EntropyGate"]

DEFAULT_E0_FRACTION = 0.4
# Released StableSleep code: skip when the batch-mean entropy exceeds 1.2 nats with C = 5 sleep stages.
STABLESLEEP_MAX_MEAN = 1.2
STABLESLEEP_CLASSES = 5


class EntropyGate(Rail):
    """Per-sample reliability gate, EATA (Niu et al., ICML 2022, Eq. 3) / SAR (Niu et al., ICLR 2023, Eq. 2).

    A sample feeds the update only if H(x) < E0; E0 = ``e0`` nats, or ``e0_fraction`` * ln C (default
    0.4 ln C). Samples at or above E0 (or with a non-finite entropy) get weight 0; when no sample keeps a
    positive weight the update is skipped. Events: "gate" (kept, dropped) when some were dropped, "skip"
    when none remain.
    """

    name = "entropy_gate"
    acts_on = frozenset({Target.SAMPLE_WEIGHTS})

    def __init__(self, e0: float | None = None, e0_fraction: float | None = None) -> None:
        if e0 is not None and e0_fraction is not None:
            raise ConfigError(f"{self.name}: give either e0 (nats) or e0_fraction (of ln C), not both")
        self.e0 = None if e0 is None else check_number(self.name, "e0", e0, low=0.0, low_open=True)
        fraction = DEFAULT_E0_FRACTION if e0_fraction is None else e0_fraction
        self.e0_fraction = check_number(self.name, "e0_fraction", fraction, low=0.0, high=1.0, low_open=True)
        self._num_classes: int | None = None

    def bind(self, env: RailEnv) -> None:
        self._num_classes = env.num_classes

    def threshold(self, num_classes: int | None = None) -> float:
        """E0 in nats for ``num_classes`` classes (the bound class count when omitted)."""
        if self.e0 is not None:
            return self.e0
        classes = num_classes if num_classes is not None else self._num_classes
        if classes is None:
            raise RuntimeError(f"{self.name}: class count unknown (call bind() first)")
        return self.e0_fraction * math.log(classes)

    def before_update(self, ctx: StepContext) -> None:
        e0 = self.threshold(ctx.num_classes)
        ent = np.asarray(ctx.entropy, dtype=np.float64).reshape(-1)
        weights = np.asarray(ctx.weights)
        active = weights.reshape(-1) > 0
        reliable = np.isfinite(ent) & (ent < e0)
        drop = active & ~reliable
        kept = int(np.count_nonzero(active & reliable))
        dropped = int(np.count_nonzero(drop))
        if dropped:
            ctx.weights = np.where(drop.reshape(weights.shape), 0, weights).astype(weights.dtype, copy=False)
        data: dict[str, Any] = {"kept": kept, "dropped": dropped, "batch_size": int(ent.size), "e0": e0}
        if kept == 0:
            ctx.skip_update = True
            reason = f"no sample has entropy below E0 = {e0:.4g} nats" if dropped else "no sample has a positive weight"
            ctx.emit(self.name, "skip", reason, **data)
        elif dropped:
            ctx.emit(self.name, "gate", f"{dropped} of {ent.size} samples at or above E0 = {e0:.4g} nats", **data)


class BatchEntropyGate(Rail):
    """Batch-level gate from StableSleep: pause adaptation on uncertain windows, keep predicting.

    ``mode="band"`` (StableSleep paper): H_t = lambda H_{t-1} + (1 - lambda) mean_i H_i (H_1 = the first
    batch mean, lambda = ``momentum``, default 0.9); skip the update while H_t lies outside
    [``h_min``, ``h_max``] (either bound may be None = open). The EMA is updated on every batch.
    ``mode="max_mean"`` (released StableSleep code): skip when the batch-mean entropy exceeds ``max_mean``
    nats, or ``max_mean_fraction`` * ln C; default 1.2 nats at C = 5, i.e. fraction 1.2 / ln 5 ~ 0.746 of
    ln C for other class counts. ``mode`` defaults to "band" when h_min/h_max are given, else "max_mean".
    The batch mean is over all samples with a finite entropy; a batch with none is skipped.
    """

    name = "batch_entropy_gate"
    acts_on = frozenset({Target.BATCH})
    MODES = ("band", "max_mean")

    def __init__(
        self,
        mode: str | None = None,
        max_mean: float | None = None,
        max_mean_fraction: float | None = None,
        momentum: float = 0.9,
        h_min: float | None = None,
        h_max: float | None = None,
    ) -> None:
        band_given = h_min is not None or h_max is not None
        max_given = max_mean is not None or max_mean_fraction is not None
        self.mode = check_choice(self.name, "mode", mode or ("band" if band_given else "max_mean"), self.MODES)
        if self.mode == "band":
            if max_given:
                raise ConfigError(f"{self.name}: max_mean/max_mean_fraction apply to mode 'max_mean', not 'band'")
            if not band_given:
                raise ConfigError(f"{self.name}: mode 'band' needs h_min and/or h_max (nats)")
        elif band_given:
            raise ConfigError(f"{self.name}: h_min/h_max apply to mode 'band', not 'max_mean'")
        if max_mean is not None and max_mean_fraction is not None:
            raise ConfigError(f"{self.name}: give either max_mean (nats) or max_mean_fraction (of ln C), not both")
        self.max_mean = (
            None if max_mean is None else check_number(self.name, "max_mean", max_mean, low=0.0, low_open=True)
        )
        self.max_mean_fraction = (
            None
            if max_mean_fraction is None
            else check_number(self.name, "max_mean_fraction", max_mean_fraction, low=0.0, high=1.0, low_open=True)
        )
        self.momentum = check_number(self.name, "momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.h_min = None if h_min is None else check_number(self.name, "h_min", h_min, low=0.0)
        self.h_max = None if h_max is None else check_number(self.name, "h_max", h_max, low=0.0)
        if self.h_min is not None and self.h_max is not None and self.h_min > self.h_max:
            raise ConfigError(f"{self.name}: h_min ({self.h_min}) must not exceed h_max ({self.h_max})")
        self.ema: float | None = None
        self.batches = 0

    def max_mean_threshold(self, num_classes: int) -> float:
        """The max_mean-mode threshold in nats for ``num_classes`` classes."""
        if self.max_mean is not None:
            return self.max_mean
        fraction = self.max_mean_fraction
        if fraction is None:
            fraction = STABLESLEEP_MAX_MEAN / math.log(STABLESLEEP_CLASSES)
        return fraction * math.log(num_classes)

    def before_update(self, ctx: StepContext) -> None:
        mean = batch_mean_entropy(ctx)
        if mean is None:
            ctx.skip_update = True
            ctx.emit(self.name, "skip", "no sample in the batch has a finite entropy", value=None)
            return
        if self.mode == "max_mean":
            limit = self.max_mean_threshold(ctx.num_classes)
            if mean > limit:
                ctx.skip_update = True
                ctx.emit(
                    self.name, "skip", f"batch-mean entropy {mean:.4g} > {limit:.4g} nats", value=mean, threshold=limit
                )
            return
        self.ema = mean if self.ema is None else self.momentum * self.ema + (1.0 - self.momentum) * mean
        self.batches += 1
        low = -math.inf if self.h_min is None else self.h_min
        high = math.inf if self.h_max is None else self.h_max
        if not low <= self.ema <= high:
            ctx.skip_update = True
            ctx.emit(
                self.name,
                "skip",
                f"entropy EMA {self.ema:.4g} outside [{low:.4g}, {high:.4g}] nats",
                value=self.ema,
                batch_mean=mean,
                h_min=self.h_min,
                h_max=self.h_max,
            )

    def on_reset(self, target: str) -> None:
        # The entropy level of the reset model differs: restart the EMA from the next batch.
        self.ema = None
        self.batches = 0

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"ema": opt_float(self.ema), "batches": self.batches}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        ema = meta.get("ema")
        self.ema = None if ema is None else float(ema)
        self.batches = int(meta.get("batches", 0))


class DiversityGate(Rail):
    """Batch-level gate against label-correlated batches (online label shift, SAR's wild setting).

    Entropy minimisation on a batch whose predictions are dominated by one class pulls the normalisation
    parameters towards that class (Niu et al., ICLR 2023, Sec. 3; Boudiaf et al., CVPR 2022). Skip the
    update when the most frequent predicted class takes more than ``max_class_fraction`` of a batch of at
    least ``min_batch`` samples; predictions are unaffected. Default: min(0.9, max(3.5 / C, 5 / B)) for a
    batch of B (0.35 for 10 classes, 0.7 for 5 sleep stages; for 1000 classes at B = 64, 5 samples of one
    class, 7.8%, since 3.5 / C would be under one sample), well above what an i.i.d. batch reaches.
    """

    name = "diversity_gate"
    acts_on = frozenset({Target.BATCH})

    def __init__(self, max_class_fraction: float | None = None, min_batch: int = 8) -> None:
        self.max_class_fraction = (
            None
            if max_class_fraction is None
            else check_number(self.name, "max_class_fraction", max_class_fraction, low=0.0, high=1.0, low_open=True)
        )
        self.min_batch = int(check_number(self.name, "min_batch", min_batch, low=1.0))

    def bound(self, num_classes: int, batch: int = 1) -> float:
        if self.max_class_fraction is not None:
            return self.max_class_fraction
        return min(0.9, max(3.5 / num_classes, 5.0 / batch))

    def before_update(self, ctx: StepContext) -> None:
        preds = np.argmax(ctx.logits, axis=1)
        if preds.size < self.min_batch:
            return
        counts = np.bincount(preds, minlength=ctx.num_classes)
        fraction = float(counts.max()) / preds.size
        bound = self.bound(ctx.num_classes, preds.size)
        if fraction > bound:
            ctx.skip_update = True
            ctx.emit(
                self.name,
                "skip",
                f"class {int(counts.argmax())} takes {fraction:.0%} of the batch "
                f"(> {bound:.0%}): label-correlated batch",
                fraction=round(fraction, 4),
                dominant_class=int(counts.argmax()),
            )
