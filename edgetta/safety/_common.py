"""Shared helpers for the rails: argument validation (ConfigError naming ``rail.key``) and small statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.safety.base import StepContext

__all__ = [
    "batch_mean_entropy",
    "check_choice",
    "check_int",
    "check_number",
    "copy_params",
    "opt_float",
    "update_applies",
    "weighted_mean_entropy",
]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    return f"{'(' if low is None or low_open else '['}{left}, {right}{')' if high is None or high_open else ']'}"


def check_number(
    rail: str,
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the interval, or raise ConfigError naming ``rail.key``."""
    valid = f"valid: a number in {_interval(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = ""
        if isinstance(value, str):
            hint = "; YAML reads 1e-3 as a string, write 1.0e-3"
        raise ConfigError(f"{rail}.{key} must be a number, got {value!r} ({valid}{hint})")
    v = float(value)
    bad = not math.isfinite(v)
    bad = bad or (low is not None and (v < low or (low_open and v == low)))
    bad = bad or (high is not None and (v > high or (high_open and v == high)))
    if bad:
        raise ConfigError(f"{rail}.{key} = {value!r} is out of range ({valid})")
    return v


def check_int(rail: str, key: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``, or raise ConfigError naming ``rail.key``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{rail}.{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(rail: str, key: str, value: Any, options: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``options``, or raise ConfigError listing them."""
    if value not in options:
        raise ConfigError(f"{rail}.{key} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return str(value)


def opt_float(value: float | None) -> float | None:
    """A JSON-safe float: None stays None, non-finite becomes None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def batch_mean_entropy(ctx: StepContext) -> float | None:
    """Mean per-sample entropy over every sample of the batch with a finite entropy (None if none)."""
    ent = np.asarray(ctx.entropy, dtype=np.float64).reshape(-1)
    ent = ent[np.isfinite(ent)]
    return float(ent.mean()) if ent.size else None


def weighted_mean_entropy(ctx: StepContext) -> float | None:
    """Mean entropy over the samples that take part in the update (weight > 0, finite entropy)."""
    ent = np.asarray(ctx.entropy, dtype=np.float64).reshape(-1)
    keep = (np.asarray(ctx.weights).reshape(-1) > 0) & np.isfinite(ent)
    return float(ent[keep].mean()) if np.any(keep) else None


def update_applies(ctx: StepContext) -> bool:
    """True when the step carries a proposal that no rail has skipped or rejected (so far)."""
    return ctx.proposed is not None and not ctx.skip_update and not ctx.reject_update


def copy_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Independent copies of a parameter dict."""
    return {k: np.array(v, copy=True) for k, v in params.items()}
