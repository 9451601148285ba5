"""StableSleep EMA snapshot with drift reset.

After each committed step phi <- tau phi + (1 - tau) theta (phi starts at the source values). When a drift
criterion fires, the rail requests a reset to the snapshot (theta <- phi):

* ``patience`` K: K consecutive batches whose mean entropy rose over the previous batch's;
* ``band`` (h_min, h_max): an EMA (``band_momentum``) of the batch-mean entropy leaves [h_min, h_max].

Entropy is observed on every batch in ``before_update`` (gated batches included: uncertain windows are
the drift signal); the reset is requested in ``after_update``. A reset to source also resets phi.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.kernels import ema_update_dict
from edgetta.safety._common import batch_mean_entropy, check_int, check_number, opt_float, update_applies
from edgetta.safety.base import RESET_SNAPSHOT, RESET_SOURCE, Rail, RailEnv, StepContext, Target

__all__ = ["EmaReset"]

_PHI = "phi/"


class EmaReset(Rail):
    """Keep an EMA snapshot of the trainable parameters and roll back to it when the entropy drifts."""

    name = "ema_reset"
    acts_on = frozenset({Target.RESET})

    def __init__(
        self,
        tau: float = 0.99,
        patience: int | None = 5,
        band: Sequence[float] | None = None,
        band_momentum: float = 0.9,
    ) -> None:
        if patience is None and band is None:
            raise ConfigError(f"{self.name}: patience and band are both None; enable at least one drift criterion")
        self.tau = check_number(self.name, "tau", tau, low=0.0, high=1.0, low_open=True, high_open=True)
        self.patience = None if patience is None else check_int(self.name, "patience", patience, minimum=1)
        self.band: tuple[float, float] | None = None
        if band is not None:
            if isinstance(band, (str, bytes)) or not isinstance(band, Sequence) or len(band) != 2:
                raise ConfigError(f"{self.name}.band must be a pair [h_min, h_max] in nats, got {band!r}")
            low = check_number(self.name, "band[0]", band[0], low=0.0)
            high = check_number(self.name, "band[1]", band[1], low=0.0)
            if low > high:
                raise ConfigError(f"{self.name}.band: h_min ({low}) must not exceed h_max ({high})")
            self.band = (low, high)
        self.band_momentum = check_number(self.name, "band_momentum", band_momentum, low=0.0, high=1.0, high_open=True)
        self.phi: dict[str, np.ndarray] = {}
        self._source: dict[str, np.ndarray] = {}
        self.rising = 0
        self.last_mean: float | None = None
        self.band_ema: float | None = None

    def bind(self, env: RailEnv) -> None:
        # phi is initialised lazily from the source for the keys the method actually trains.
        self._source = env.source

    def _track(self, ctx: StepContext) -> None:
        for key in ctx.params:
            if key not in self.phi:
                start = self._source.get(key, ctx.source.get(key))
                if start is None:
                    start = ctx.params[key]
                self.phi[key] = np.array(start, dtype=np.float64, copy=True)

    def snapshot(self, ctx: StepContext) -> dict[str, np.ndarray]:
        """A copy of phi for the trainable keys, in the parameters' dtypes."""
        self._track(ctx)
        return {k: self.phi[k].astype(np.asarray(v).dtype) for k, v in ctx.params.items()}

    def before_update(self, ctx: StepContext) -> None:
        mean = batch_mean_entropy(ctx)
        if mean is None:
            return
        self.rising = self.rising + 1 if self.last_mean is not None and mean > self.last_mean else 0
        self.last_mean = mean
        if self.band is not None:
            m = self.band_momentum
            self.band_ema = mean if self.band_ema is None else m * self.band_ema + (1.0 - m) * mean

    def after_update(self, ctx: StepContext) -> None:
        if self.patience is not None and self.rising >= self.patience:
            rising = self.rising
            self._clear_signals()
            ctx.request_reset(
                self.name,
                RESET_SNAPSHOT,
                f"mean entropy rose for {rising} consecutive batches",
                params=self.snapshot(ctx),
                rising=rising,
                patience=self.patience,
            )
        elif self.band is not None and self.band_ema is not None:
            low, high = self.band
            if not low <= self.band_ema <= high:
                value = self.band_ema
                self._clear_signals()
                ctx.request_reset(
                    self.name,
                    RESET_SNAPSHOT,
                    f"entropy EMA {value:.4g} left the band [{low:g}, {high:g}] nats",
                    params=self.snapshot(ctx),
                    value=value,
                    h_min=low,
                    h_max=high,
                )

    def after_commit(self, ctx: StepContext) -> None:
        if ctx.reset is not None:
            return  # the reset decides the new state; on_reset handles phi
        self._track(ctx)
        theta = ctx.proposed if ctx.proposed is not None and update_applies(ctx) else ctx.params
        ema_update_dict({k: self.phi[k] for k in ctx.params}, theta, self.tau)

    def _clear_signals(self) -> None:
        self.rising = 0
        self.last_mean = None
        self.band_ema = None

    def on_reset(self, target: str) -> None:
        self._clear_signals()
        if target == RESET_SOURCE:
            self.phi = {}  # re-initialised from the source on the next step

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {_PHI + k: v.copy() for k, v in self.phi.items()}
        meta = {"rising": self.rising, "last_mean": opt_float(self.last_mean), "band_ema": opt_float(self.band_ema)}
        return tensors, meta

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.phi = {k[len(_PHI) :]: np.array(v, dtype=np.float64) for k, v in tensors.items() if k.startswith(_PHI)}
        self.rising = int(meta.get("rising", 0))
        last, band = meta.get("last_mean"), meta.get("band_ema")
        self.last_mean = None if last is None else float(last)
        self.band_ema = None if band is None else float(band)
