"""Exponential moving averages: x <- m * x + (1 - m) * new.

Used for EATA's model-probability vector (Niu et al., ICML 2022, Eq. 7), StableSleep's EMA parameter
snapshot (phi <- tau phi + (1 - tau) theta) and entropy EMAs. Note the convention: ``momentum`` is the
weight on the OLD value.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["ema_update", "ema_update_dict"]

T = TypeVar("T", float, np.ndarray)


def _check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")


def ema_update(old: T, new: T, momentum: float) -> T:
    """Return ``momentum * old + (1 - momentum) * new`` (a new value; inputs are not modified)."""
    _check_momentum(momentum)
    return momentum * old + (1.0 - momentum) * new


def ema_update_dict(target: dict[str, np.ndarray], source: dict[str, np.ndarray], momentum: float) -> None:
    """In place, for every key of ``target``: target[k] <- momentum * target[k] + (1 - momentum) * source[k].

    ``source`` may hold extra keys; a target key missing from ``source`` raises KeyError.
    """
    _check_momentum(momentum)
    missing = [k for k in target if k not in source]
    if missing:
        raise KeyError(f"ema_update_dict: source lacks keys {missing}")
    for key, value in target.items():
        new = np.asarray(source[key])
        if new.shape != value.shape:
            raise ValueError(f"ema_update_dict: shape mismatch for {key!r}: {value.shape} vs {new.shape}")
        value *= momentum
        value += (1.0 - momentum) * new
