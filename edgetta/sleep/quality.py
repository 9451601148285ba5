"""Per-epoch signal quality of single-lead sleep EEG (microvolts): which epochs must never adapt the model.

Each epoch is checked in this order and gets the first reason that applies (None when it passes):

- ``flat``: the epoch's standard deviation is below ``flat_uv`` (default 0.5 uV: an amplifier that
  records nothing, a shorted lead), or it holds a run of at least ``flat_seconds`` (2 s) with sample-to-sample
  steps below ``flat_step_uv`` (0.01 uV) away from its extremes (a lead that went dead mid-epoch).
- ``clipping``: a run of at least ``clip_seconds`` (0.1 s) pinned within ``clip_tolerance`` (0.1 %) of the
  epoch's range at its maximum or minimum (amplifier or EDF saturation). EEG peaks pass the top in a few
  samples; a rail stays there.
- ``line noise``: the 50 and 60 Hz mains bands (+-1 Hz, folded to their alias when the rate is below twice
  the mains frequency) hold more than ``line_fraction`` (0.7) of the power above 0.5 Hz, and the mains rms
  exceeds ``line_uv`` (5 uV): a disconnected electrode picks up mostly mains.
- ``noise``: more than ``noise_fraction`` (0.5) of the power above 0.5 Hz lies above ``noise_hz`` (25 Hz)
  outside the mains bands,
  or the epoch's rms exceeds ``max_rms_uv`` (200 uV): broadband noise of a loose or disconnected electrode.
  Sleep EEG, muscle-rich wake included, keeps most of its power below 25 Hz and its rms well below 200 uV.
- ``amplitude``: a sample more than ``amplitude_uv`` (500 uV) from the epoch's median: beyond what a
  scalp Fpz-Cz recording shows (slow waves reach ~300 uV peak to peak), e.g. electrode pops and movement.

The defaults suit Fpz-Cz at 100 Hz in microvolts (Sleep-EDF); slow waves of N3, K-complexes, spindles,
blinks and rapid eye movements pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetta.errors import DataError

REASONS = ("flat", "clipping", "line noise", "noise", "amplitude")
DEFAULTS: dict[str, float] = {
    "flat_uv": 0.5,
    "flat_seconds": 2.0,
    "flat_step_uv": 0.01,
    "clip_seconds": 0.1,
    "clip_tolerance": 0.001,
    "line_fraction": 0.7,
    "line_uv": 5.0,
    "noise_fraction": 0.5,
    "noise_hz": 25.0,
    "max_rms_uv": 200.0,
    "amplitude_uv": 500.0,
}
MAINS_HZ = (50.0, 60.0)


@dataclass
class QualityReport:
    """``ok[i]`` is True when epoch i passed; ``reasons[i]`` names the failed check (None when ok)."""

    ok: np.ndarray  # bool [n]
    reasons: list[str | None]
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> int:
        return int((~self.ok).sum())

    def counts(self) -> dict[str, int]:
        """How many epochs each reason flagged."""
        return {r: sum(1 for x in self.reasons if x == r) for r in REASONS if r in self.reasons}


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Per row of a bool [n, m] array, the longest run of True."""
    n, m = mask.shape
    if m == 0:
        return np.zeros(n, np.int64)
    padded = np.zeros((n, m + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    out = np.zeros(n, np.int64)
    rows_start, cols_start = np.nonzero(edges == 1)
    _, cols_stop = np.nonzero(edges == -1)
    np.maximum.at(out, rows_start, cols_stop - cols_start)
    return out


def _alias(freq: float, rate: float) -> float:
    """Where a tone at ``freq`` Hz appears when sampled at ``rate`` Hz without anti-aliasing."""
    return abs(freq - rate * round(freq / rate))


def _thresholds(overrides: dict[str, Any]) -> dict[str, float]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise DataError(f"unknown quality threshold(s) {unknown}; the thresholds are {sorted(DEFAULTS)}")
    out = dict(DEFAULTS)
    for key, value in overrides.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise DataError(f"quality threshold {key} must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def epoch_quality(epochs: np.ndarray, rate: float, **thresholds: float) -> QualityReport:
    """Check each epoch of ``epochs`` [n, samples] (uV at ``rate`` Hz); see the module docstring for the checks
    and the ``thresholds`` (keyword overrides of :data:`DEFAULTS`)."""
    limits = _thresholds(thresholds)
    x = np.asarray(epochs, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise DataError(f"epochs must be [n_epochs, samples], got shape {x.shape}")
    if not (rate > 0 and math.isfinite(rate)):
        raise DataError(f"rate must be a positive number of Hz, got {rate!r}")
    n, m = x.shape
    reasons: list[str | None] = [None] * n
    if n == 0 or m == 0:
        return QualityReport(np.ones(n, bool), reasons, limits)

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = reason

    flag(~np.isfinite(x).all(axis=1), "flat")  # NaN/inf: no usable signal
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    std = x.std(axis=1)
    top, bottom = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
    span = top - bottom
    # flat: tiny variance, or a long dead stretch that is not a rail
    still = np.abs(np.diff(x, axis=1)) < limits["flat_step_uv"]
    tol = np.maximum(span * limits["clip_tolerance"], 1e-9)
    at_top, at_bottom = (top - x) <= tol, (x - bottom) <= tol
    rail = at_top[:, 1:] | at_bottom[:, 1:]
    dead = _longest_run(still & ~rail) + 1
    flag((std < limits["flat_uv"]) | (dead >= limits["flat_seconds"] * rate), "flat")
    # clipping: pinned at an extreme for clip_seconds
    pinned = np.maximum(_longest_run(at_top), _longest_run(at_bottom))
    flag(pinned >= max(2, limits["clip_seconds"] * rate), "clipping")
    # spectra for line noise and broadband noise
    freqs = np.fft.rfftfreq(m, 1.0 / rate)
    power = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)) ** 2
    power[:, 1 : (m + 1) // 2] *= 2  # one-sided
    power /= m * m
    total = power[:, freqs >= 0.5].sum(axis=1) + 1e-12
    line_band = np.zeros(len(freqs), dtype=bool)
    for mains in MAINS_HZ:
        line_band |= np.abs(freqs - _alias(mains, rate)) <= 1.0
    line = power[:, line_band].sum(axis=1)
    flag((line / total > limits["line_fraction"]) & (np.sqrt(line) > limits["line_uv"]), "line noise")
    high = power[:, (freqs > limits["noise_hz"]) & ~line_band].sum(axis=1)  # mains is judged above
    flag((high / total > limits["noise_fraction"]) | (std > limits["max_rms_uv"]), "noise")
    median = np.median(x, axis=1, keepdims=True)
    flag(np.abs(x - median).max(axis=1) > limits["amplitude_uv"], "amplitude")
    ok = np.array([r is None for r in reasons], dtype=bool)
    return QualityReport(ok, reasons, limits)
