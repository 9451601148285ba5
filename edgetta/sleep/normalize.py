"""Per-record running z-score of the EEG, causal: epoch t is normalised with statistics of epochs 1..t only.

Exponential moving averages of the epoch mean and mean square, m_t = (1 - a) m_{t-1} + a mean(x_t) and
s_t = (1 - a) s_{t-1} + a mean(x_t^2) (the first epoch initialises both), and
z_t = (x_t - m_t) / sqrt(max(s_t - m_t^2, 0) + eps). This is the same formula, momentum and epsilon as the
streaming preprocessor's ``zscore: running`` (``edgetta.streams.preprocess.signal``), so a model trained on
these inputs sees the same inputs offline (``edgetta sleep stage``) and live (``edgetta run``). A new record
or patient starts a new :class:`RunningZScore` (``reset``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_MOMENTUM", "RunningZScore", "zscore_record"]

DEFAULT_MOMENTUM = 0.1
EPS = 1e-12


class RunningZScore:
    """Running z-score over the epochs of one record; call it epoch by epoch, in order."""

    def __init__(self, momentum: float = DEFAULT_MOMENTUM) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"z-score momentum must lie in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.reset()

    def reset(self) -> None:
        """Forget the record's statistics (a new record or patient)."""
        self.mean: float | None = None
        self.square: float | None = None

    def __call__(self, epoch: np.ndarray, update: bool = True) -> np.ndarray:
        """Normalise one epoch (any shape; one channel) with the statistics including it. ``update=False``
        (an epoch flagged by the signal-quality check): normalise with the statistics so far and leave them
        unchanged (with none yet, the epoch's own)."""
        x = np.asarray(epoch, dtype=np.float64)
        own = (float(x.mean()), float((x * x).mean()))
        if self.mean is None or self.square is None:
            mean, square = own
            if update:
                self.mean, self.square = own
        elif update:
            a = self.momentum
            self.mean = mean = (1 - a) * self.mean + a * own[0]
            self.square = square = (1 - a) * self.square + a * own[1]
        else:
            mean, square = self.mean, self.square
        var = max(square - mean * mean, 0.0)
        return ((x - mean) / np.sqrt(var + EPS)).astype(np.float32)


def zscore_record(epochs: np.ndarray, momentum: float = DEFAULT_MOMENTUM, skip: np.ndarray | None = None) -> np.ndarray:
    """Running z-score of a record's epochs [n, T] in time order. ``skip`` (bool [n]): epochs that must not
    update the statistics (flagged by the signal-quality check)."""
    epochs = np.asarray(epochs)
    out = np.empty(epochs.shape, np.float32)
    z = RunningZScore(momentum)
    for i, epoch in enumerate(epochs):
        out[i] = z(epoch, update=skip is None or not bool(skip[i]))
    return out
