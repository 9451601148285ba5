"""Collapse guard: SAR's model recovery (Niu et al., ICLR 2023, Sec. 4, Alg. 1) plus a diversity check.

Signal 1 (SAR): e <- m e + (1 - m) Hbar after every applied update (e = Hbar the first time), with Hbar the
mean entropy of the samples that feed the update (weight > 0, NaN skipped); e < ``threshold`` means the
model has collapsed onto confident trivial solutions -> reset to source, and the EMA restarts. SAR
tracks the loss of its second (SAM) forward; here the pre-update entropy stands in for it.
Signal 2: the argmax predictions of the last ``diversity_window`` samples; one class taking more than
``max_class_fraction`` of a full window -> reset to source. Either signal can be disabled with None.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.safety._common import check_int, check_number, opt_float, update_applies, weighted_mean_entropy
from edgetta.safety.base import RESET_SOURCE, Rail, StepContext, Target

__all__ = ["CollapseGuard"]


class CollapseGuard(Rail):
    """Reset to source when the entropy EMA drops below ``threshold`` or one class fills the prediction window."""

    name = "collapse_guard"
    acts_on = frozenset({Target.RESET})

    def __init__(
        self,
        ema_momentum: float = 0.9,
        threshold: float | None = 0.2,
        diversity_window: int = 256,
        max_class_fraction: float | None = 0.95,
    ) -> None:
        if threshold is None and max_class_fraction is None:
            raise ConfigError(f"{self.name}: threshold and max_class_fraction are both None; enable at least one")
        self.ema_momentum = check_number(self.name, "ema_momentum", ema_momentum, low=0.0, high=1.0, high_open=True)
        self.threshold = None if threshold is None else check_number(self.name, "threshold", threshold, low=0.0)
        self.diversity_window = check_int(self.name, "diversity_window", diversity_window, minimum=1)
        self.max_class_fraction = (
            None
            if max_class_fraction is None
            else check_number(
                self.name, "max_class_fraction", max_class_fraction, low=0.0, high=1.0, low_open=True, high_open=True
            )
        )
        self.ema: float | None = None
        self.updates = 0
        self._window: deque[int] = deque(maxlen=self.diversity_window)

    def before_update(self, ctx: StepContext) -> None:
        """Record this batch's predictions (every batch, gated or not)."""
        if self.max_class_fraction is None:
            return
        logits = np.asarray(ctx.logits)
        rows = logits.reshape(-1, logits.shape[-1])
        finite = np.all(np.isfinite(rows), axis=-1)
        self._window.extend(int(c) for c in np.argmax(rows[finite], axis=-1))

    def after_update(self, ctx: StepContext) -> None:
        if self.threshold is not None and update_applies(ctx):
            value = weighted_mean_entropy(ctx)
            if value is not None:
                m = self.ema_momentum
                self.ema = value if self.ema is None else m * self.ema + (1.0 - m) * value
                self.updates += 1
            if self.ema is not None and self.ema < self.threshold:
                ema = self.ema
                self._clear()
                ctx.request_reset(
                    self.name,
                    RESET_SOURCE,
                    f"entropy EMA {ema:.4g} < {self.threshold:g} (collapse)",
                    ema=ema,
                    threshold=self.threshold,
                )
                return
        if self.max_class_fraction is not None and len(self._window) == self.diversity_window:
            counts = np.bincount(np.fromiter(self._window, dtype=np.int64, count=len(self._window)))
            top = int(np.argmax(counts))
            fraction = float(counts[top]) / self.diversity_window
            if fraction > self.max_class_fraction:
                self._clear()
                ctx.request_reset(
                    self.name,
                    RESET_SOURCE,
                    f"class {top} took {fraction:.1%} of the last {self.diversity_window} predictions",
                    top_class=top,
                    fraction=fraction,
                    window=self.diversity_window,
                    max_class_fraction=self.max_class_fraction,
                )

    def _clear(self) -> None:
        self.ema = None
        self.updates = 0
        self._window.clear()

    def on_reset(self, target: str) -> None:
        self._clear()

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        window = np.fromiter(self._window, dtype=np.int64, count=len(self._window))
        return {"window": window}, {"ema": opt_float(self.ema), "updates": self.updates}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        ema = meta.get("ema")
        self.ema = None if ema is None else float(ema)
        self.updates = int(meta.get("updates", 0))
        self._window.clear()
        self._window.extend(
            int(c) for c in np.asarray(tensors.get("window", []), dtype=np.int64)[-self.diversity_window :]
        )
