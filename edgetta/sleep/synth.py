"""A SYNTHETIC single-lead (Fpz-Cz-like) sleep cohort: hypnograms, per-stage EEG, per-subject recording shifts.

Nothing here is recorded from a person; every file, EDF+ header and ``cohort.json`` written says "synthetic".
The content follows the AASM scoring manual's stage descriptions (Berry et al., AASM Manual v2.6, 2020):

- W: posterior-dominant alpha (8-12 Hz, the subject's alpha frequency) waxing and waning, muscle activity
  (15-40 Hz), eye blinks; some epochs with eyes open (little alpha).
- N1: alpha gone, theta (4-7 Hz), vertex sharp waves, slow eye movements.
- N2: sleep spindles (11-16 Hz, 0.5-2 s) and K-complexes (large biphasic waves), some delta.
- N3: high-amplitude delta (0.5-2 Hz, more than 75 uV peak to peak), deeper in the first cycles.
- REM: low amplitude mixed frequency, sawtooth theta trains (2-6 Hz), rapid eye movements (not in every
  epoch: tonic REM looks like N1), low muscle tone.

Every stage sits on a 1/f^beta background. Stage features vary from epoch to epoch (log-normal amplitudes,
Poisson event counts), drift over the night (slow-wave activity decays), and epochs beside a stage change
carry part of the neighbouring stage's features, so stages are separable but not trivially.

Hypnograms follow sleep architecture: wake at both ends (sleep latency, final awakening), ~90-min cycles
(N1 -> N2 -> N3 -> N2 -> REM) with N3 concentrated early and REM periods lengthening, brief awakenings
inside the night. Proportions land near W 10-20 %, N1 ~5 %, N2 45-55 %, N3 15-20 %, REM 20-25 %.

Recording shifts (:data:`SHIFTS`), one per subject: ``gain`` (amplifier gain x0.45 or x2.2), ``alpha_freq``
(alpha at 7.5-8 or 12-12.5 Hz), ``slope`` (background 1/f exponent 1.0-1.2 or 2.9-3.1 instead of ~2),
``line_noise`` (50 or 60 Hz mains, aliased when the rate is below twice it), ``wander`` (sweat/respiration
baseline drift below 0.3 Hz), ``pops`` (electrode pops: steps with exponential decay), ``rate`` (128 or
200 Hz instead of 100 Hz), and ``mixed`` (gain, slope, line noise, wander and rate together, milder).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import DataError, OutputError
from edgetta.sleep.stages import N1, N2, N3, REM, STAGES, W
from edgetta.streams.extras import need

SHIFTS: tuple[str, ...] = ("gain", "alpha_freq", "slope", "line_noise", "wander", "pops", "rate", "mixed")
EPOCH_SECONDS = 30.0
BASE_RATE = 100.0
EMG_RATE = 1.0
CHANNEL = "EEG Fpz-Cz"
EMG_CHANNEL = "EMG submental"
MAX_SUBJECTS = 100
_SHIFT_SALT = {name: i + 1 for i, name in enumerate(SHIFTS)}

# Per-stage amplitudes (uV, roughly the rms of each component), indexed W, N1, N2, N3, REM.
_BACKGROUND = np.array([13.0, 12.0, 14.0, 17.0, 10.0])
_ALPHA = np.array([13.0, 4.5, 1.5, 0.8, 3.0])
_THETA = np.array([4.0, 8.0, 6.5, 5.0, 7.5])
_DELTA = np.array([4.0, 7.0, 15.0, 33.0, 6.0])
_MUSCLE = np.array([3.5, 2.2, 1.6, 1.4, 1.4])
_EMG_TONE = np.array([18.0, 9.0, 6.5, 5.5, 2.0])  # submental EMG envelope, uV
# Events per 30-s epoch.
_SPINDLES = np.array([0.0, 0.2, 1.6, 0.8, 0.05])
_K_COMPLEXES = np.array([0.0, 0.1, 0.6, 0.35, 0.0])
_VERTEX = np.array([0.0, 1.3, 0.2, 0.0, 0.05])
_SAWTOOTH = np.array([0.0, 0.05, 0.0, 0.0, 0.8])
_BLINKS = np.array([2.0, 0.3, 0.0, 0.0, 0.0])
_RAPID_EYE = np.array([0.0, 0.0, 0.0, 0.0, 1.5])
_SLOW_EYE = np.array([0.3, 0.8, 0.05, 0.0, 0.1])
_VARIABILITY = 0.45  # log-normal sigma of per-epoch amplitudes


@dataclass
class SynthNight:
    """A SYNTHETIC night: the EEG (uV) at ``rate`` Hz and its stage per 30-s epoch (class index of STAGES)."""

    signal_uv: np.ndarray  # float32 [n_epochs * 30 * rate]
    rate: float
    stages: np.ndarray  # int64 [n_epochs]
    shift: str | None
    subject: int = 0
    emg_uv: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # at EMG_RATE Hz
    traits: dict[str, Any] = field(default_factory=dict)  # the subject's parameters (alpha Hz, slope, gain, ...)
    synthetic: bool = True


@dataclass(frozen=True)
class SynthRecord:
    """One SYNTHETIC night written by :func:`write_cohort`."""

    subject: int
    record_id: str
    psg: Path
    hypnogram: Path
    shift: str | None
    rate: float
    epochs: int
    synthetic: bool = True


# ---------------------------------------------------------------------------------------------- hypnogram


def synth_hypnogram(rng: np.random.Generator, hours: float = 8.0) -> np.ndarray:
    """Stage per 30-s epoch of a SYNTHETIC night of ``hours`` (see the module docstring)."""
    total = int(round(hours * 3600 / EPOCH_SECONDS))
    if total < 20:
        raise DataError(f"a synthetic night needs at least 10 minutes, got {hours:g} h")
    scale = total / 960.0  # 960 epochs = 8 h
    onset = max(2, int(round(rng.uniform(64, 100) * scale)))  # 32-50 min to fall asleep
    final = max(2, int(round(rng.uniform(32, 64) * scale)))  # 16-32 min awake at the end
    sleep_len = max(4, total - onset - final)
    stages: list[int] = []
    cycle = 0
    while len(stages) < sleep_len:
        length = int(rng.uniform(160, 210))  # 80-105 min
        stages.extend(_cycle(rng, cycle, length))
        cycle += 1
    night = np.array([W] * onset + stages[:sleep_len] + [W] * final, dtype=np.int64)[:total]
    _awakenings(rng, night, onset, onset + sleep_len)
    return night


def _cycle(rng: np.random.Generator, cycle: int, length: int) -> list[int]:
    """One NREM-REM cycle of ``length`` epochs: N1, N2, N3 (early cycles), N2, REM."""
    n3_share = (0.42, 0.30, 0.10, 0.04, 0.0)[min(cycle, 4)] * rng.uniform(0.8, 1.2)
    rem_share = (0.14, 0.27, 0.32, 0.36, 0.39)[min(cycle, 4)] * rng.uniform(0.85, 1.15)
    n1 = int(rng.integers(6, 14) if cycle == 0 else rng.integers(3, 9))
    n3 = int(n3_share * length)
    rem = int(rem_share * length)
    n2 = max(6, length - n1 - n3 - rem)
    first_n2 = int(n2 * (rng.uniform(0.4, 0.6) if n3 else rng.uniform(0.6, 0.8)))
    out = [N1] * n1 + [N2] * first_n2 + _fragment(rng, [N3] * n3, N2, 0.04) + [N2] * (n2 - first_n2)
    return out + _fragment(rng, [REM] * rem, N1, 0.03)


def _fragment(rng: np.random.Generator, block: list[int], other: int, rate: float) -> list[int]:
    """A stage block with brief runs (1-3 epochs) of ``other`` inside, about ``rate`` of its epochs."""
    out = list(block)
    for k in range(1, len(out) - 3):
        if rng.random() < rate / 2:
            for j in range(int(rng.integers(1, 4))):
                if k + j < len(out) - 1:
                    out[k + j] = other
    return out


def _awakenings(rng: np.random.Generator, night: np.ndarray, start: int, stop: int) -> None:
    """Brief awakenings (1-6 epochs, followed by N1) inside the sleep period, mostly after REM."""
    count = int(rng.integers(4, 9) * (stop - start) / 800) + 1
    for _ in range(count):
        where = int(rng.integers(start + 20, max(start + 21, stop - 10)))
        after_rem = np.flatnonzero(night[where : min(stop - 6, where + 200)] == REM)
        if after_rem.size and rng.random() < 0.6:  # at the end of a REM run
            run = where + int(after_rem[0])
            while run < stop - 8 and night[run] == REM:
                run += 1
            where = run
        length = int(rng.integers(1, 7))
        night[where : where + length] = W
        night[where + length : where + length + int(rng.integers(1, 4))] = N1


# ---------------------------------------------------------------------------------------------- signals


def _traits(subject: int, seed: int, shift: str | None) -> dict[str, Any]:
    """The subject's recording and physiology parameters; a shift moves some of them out of the usual range."""
    rng = np.random.default_rng([seed, subject, 0])
    traits: dict[str, Any] = {
        "rate": BASE_RATE,
        "gain": float(rng.uniform(0.85, 1.15)),
        "alpha_hz": float(rng.uniform(9.0, 11.0)),
        "spindle_hz": float(rng.uniform(12.0, 14.5)),
        "slope": float(rng.uniform(1.8, 2.2)),
        "line_hz": None,
        "line_uv": 0.0,
        "wander_uv": 0.0,
        "pops_per_hour": 0.0,
        # the subject's own level of each component (people differ): log-normal around 1
        "scales": {k: float(rng.lognormal(0.0, 0.2)) for k in ("background", "alpha", "theta", "delta", "muscle")},
    }
    if shift is None:
        return traits
    if shift not in SHIFTS:
        raise DataError(f"unknown synthetic shift {shift!r}; use one of {', '.join(SHIFTS)} (or None)")
    srng = np.random.default_rng([seed, subject, _SHIFT_SALT[shift]])
    up = bool(srng.random() < 0.5)
    if shift == "gain":
        traits["gain"] = float(srng.uniform(2.0, 2.4) if up else srng.uniform(0.4, 0.5))
    elif shift == "alpha_freq":
        traits["alpha_hz"] = float(srng.uniform(12.0, 12.5) if up else srng.uniform(7.5, 8.0))
    elif shift == "slope":
        traits["slope"] = float(srng.uniform(2.9, 3.1) if up else srng.uniform(1.0, 1.2))
    elif shift == "line_noise":
        traits["line_hz"], traits["line_uv"] = (50.0 if up else 60.0), float(srng.uniform(6.0, 10.0))
    elif shift == "wander":
        traits["wander_uv"] = float(srng.uniform(30.0, 50.0))
    elif shift == "pops":
        traits["pops_per_hour"] = float(srng.uniform(15.0, 30.0))
    elif shift == "rate":
        traits["rate"] = 200.0 if up else 128.0
    elif shift == "mixed":
        traits["gain"] = float(srng.uniform(1.5, 1.7) if up else srng.uniform(0.55, 0.65))
        traits["slope"] = float(srng.uniform(2.6, 2.8) if up else srng.uniform(1.3, 1.5))
        traits["line_hz"], traits["line_uv"] = (50.0 if up else 60.0), float(srng.uniform(3.0, 5.0))
        traits["wander_uv"] = float(srng.uniform(15.0, 25.0))
        traits["rate"] = 128.0 if up else 200.0
    return traits


def _per_epoch(rng: np.random.Generator, stages: np.ndarray, table: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Per-epoch amplitude: the stage's value blended toward the neighbour stage (``mix``), log-normal jitter
    clipped at two sigma."""
    values = table[stages]
    neighbour = table[_neighbour(stages)]
    values = (1 - mix) * values + mix * neighbour
    jitter = np.clip(rng.normal(0.0, _VARIABILITY, len(stages)), -2 * _VARIABILITY, 2 * _VARIABILITY)
    return values * np.exp(jitter)


def _neighbour(stages: np.ndarray) -> np.ndarray:
    """For each epoch, the stage of the nearest different epoch beside it (itself when both sides match)."""
    before = np.concatenate([stages[:1], stages[:-1]])
    after = np.concatenate([stages[1:], stages[-1:]])
    return np.where(after != stages, after, before)


SUB_RATE = 32.0  # Hz: slow components (delta, theta, alpha phase and amplitude) are built at this rate


def _envelope(values: np.ndarray, per_epoch: int) -> np.ndarray:
    """Per-epoch values to [epochs, per_epoch] samples, linear between epoch centres (smooth transitions)."""
    v = values.astype(np.float32)[:, None]
    prev = np.concatenate([v[:1], v[:-1]])
    nxt = np.concatenate([v[1:], v[-1:]])
    s = (np.arange(per_epoch, dtype=np.float32) + 0.5) / per_epoch
    left, right = np.maximum(0.5 - s, 0)[None, :], np.maximum(s - 0.5, 0)[None, :]
    return v + (prev - v) * left + (nxt - v) * right


def _fast_len(m: int) -> int:
    """The smallest 2^a 3^b 5^c >= ``m`` (a fast FFT length)."""
    best = 1 << max(3, int(np.ceil(np.log2(max(m, 1)))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, int(np.ceil(np.log2(m / p35))))
            best = min(best, size) if size >= m else best
            p35 *= 3
        p5 *= 5
    return best


def _band_noise(rng: np.random.Generator, m: int, rate: float, low: float, high: float) -> np.ndarray:
    """Unit-rms noise within ``[low, high]`` Hz, ``m`` samples at ``rate`` (FFT-shaped Gaussian noise)."""
    size = _fast_len(m)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    band = (freqs >= low) & (freqs <= high)
    spectrum = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * band
    x = np.fft.irfft(spectrum, size)[:m]
    return (x / (x.std() + 1e-12)).astype(np.float32)


def _upsample(low: np.ndarray, epochs: int, sub_epoch: int, per_epoch: int) -> np.ndarray:
    """Linear interpolation of ``low`` (``sub_epoch`` samples per epoch) to [epochs, per_epoch] samples."""
    grid = low.reshape(epochs, sub_epoch)
    grid = np.concatenate([grid, np.concatenate([grid[1:, :1], grid[-1:, -1:]])], axis=1)
    position = np.arange(per_epoch) * (sub_epoch / per_epoch)
    index = position.astype(np.int64)
    weight = (position - index).astype(np.float32)[None, :]
    return grid[:, index] * (1 - weight) + grid[:, index + 1] * weight


def _background(rng: np.random.Generator, n: int, rate: float, slope: float) -> np.ndarray:
    """Unit-rms 1/f^slope noise (power spectral density), 0.3 Hz to Nyquist."""
    size = _fast_len(n)
    freqs = np.fft.rfftfreq(size, 1.0 / rate).astype(np.float32)
    shape = np.where(freqs >= 0.3, np.maximum(freqs, 0.3) ** (-slope / 2.0), 0.0).astype(np.float32)
    spectrum = np.empty(len(freqs), np.complex64)
    spectrum.real = rng.standard_normal(len(freqs), dtype=np.float32) * shape
    spectrum.imag = rng.standard_normal(len(freqs), dtype=np.float32) * shape
    x = np.fft.irfft(spectrum, size)[:n].astype(np.float32)
    return x / (x.std() + 1e-12)


def _events(
    rng: np.random.Generator,
    out: np.ndarray,
    rates: np.ndarray,
    rate: float,
    per_epoch: int,
    make: Any,
) -> None:
    """Add Poisson(``rates[k]``) events per epoch; ``make(rng)`` returns one event's waveform (uV)."""
    counts = rng.poisson(np.maximum(rates, 0.0))
    for k in np.flatnonzero(counts):
        for _ in range(int(counts[k])):
            wave = make(rng)
            start = k * per_epoch + int(rng.integers(0, per_epoch))
            stop = min(len(out), start + len(wave))
            out[start:stop] += wave[: stop - start]


def _t(rate: float, seconds: float) -> np.ndarray:
    return np.arange(max(2, int(seconds * rate))) / rate


def synth_night(subject: int, *, seed: int, shift: str | None = None, hours: float = 8.0) -> SynthNight:
    """A SYNTHETIC night of ``subject`` (deterministic in ``seed``, ``subject`` and ``shift``).

    The hypnogram and the subject's physiology depend on (seed, subject) only, so the shifted night of a
    subject has the same hypnogram as its clean night; ``shift`` (one of :data:`SHIFTS`) changes the recording."""
    if subject < 0:
        raise DataError(f"subject must be >= 0, got {subject}")
    if not 0.2 <= hours <= 24:
        raise DataError(f"hours must be between 0.2 and 24, got {hours:g}")
    traits = _traits(subject, seed, shift)
    rate = float(traits["rate"])
    stages = synth_hypnogram(np.random.default_rng([seed, subject, 100]), hours)
    rng = np.random.default_rng([seed, subject, 200, int(rate)])
    per_epoch = int(EPOCH_SECONDS * rate)
    n = len(stages) * per_epoch
    # transitional epochs: beside a stage change, 20-60 % of the neighbour's features
    changed = _neighbour(stages) != stages
    mix = np.where(changed, rng.uniform(0.2, 0.6, len(stages)), 0.0)
    # slow-wave activity decays across the night; eyes open in some wake epochs (alpha blocked)
    night_pos = np.linspace(0.0, 1.0, len(stages))
    scales = traits["scales"]
    delta = _per_epoch(rng, stages, _DELTA, mix) * (1.25 - 0.5 * night_pos) * scales["delta"]
    alpha = _per_epoch(rng, stages, _ALPHA, mix) * scales["alpha"] * np.where(rng.random(len(stages)) < 0.35, 0.3, 1.0)

    epochs = len(stages)
    sub_epoch = int(EPOCH_SECONDS * SUB_RATE)
    m = epochs * sub_epoch
    # slow rhythms at SUB_RATE: theta and delta as band-limited noise
    theta = _per_epoch(rng, stages, _THETA, mix) * scales["theta"]
    slow = _envelope(theta, sub_epoch).ravel() * _band_noise(rng, m, SUB_RATE, 4.0, 7.5)
    slow += _envelope(delta, sub_epoch).ravel() * _band_noise(rng, m, SUB_RATE, 0.5, 2.0)
    # alpha: a carrier at the subject's alpha frequency with slowly wandering phase and waxing/waning amplitude
    wax = 0.65 + 0.35 * np.clip(_band_noise(rng, m, SUB_RATE, 0.05, 0.5), -1.8, 1.8)
    drift = np.cumsum(_band_noise(rng, m, SUB_RATE, 0.05, 1.0)) * (2 * np.pi * 0.5 / SUB_RATE)
    amplitude = _envelope(alpha, sub_epoch).ravel() * wax * np.sqrt(2.0)
    x = _upsample(slow, epochs, sub_epoch, per_epoch)
    a_re = _upsample((amplitude * np.cos(drift)).astype(np.float32), epochs, sub_epoch, per_epoch)
    a_im = _upsample((amplitude * np.sin(drift)).astype(np.float32), epochs, sub_epoch, per_epoch)
    turn = 2 * np.pi * traits["alpha_hz"]
    ep = (turn * EPOCH_SECONDS * np.arange(epochs)) % (2 * np.pi)
    sp = turn * np.arange(per_epoch) / rate
    cos_e, sin_e = np.cos(ep).astype(np.float32)[:, None], np.sin(ep).astype(np.float32)[:, None]
    cos_s, sin_s = np.cos(sp).astype(np.float32)[None, :], np.sin(sp).astype(np.float32)[None, :]
    x += a_re * (cos_e * cos_s - sin_e * sin_s) - a_im * (sin_e * cos_s + cos_e * sin_s)
    # broadband: 1/f background and muscle
    background = _background(rng, n, rate, traits["slope"]).reshape(epochs, per_epoch)
    x += _envelope(_per_epoch(rng, stages, _BACKGROUND, mix) * scales["background"], per_epoch) * background
    muscle = np.diff(rng.standard_normal(n + 1, dtype=np.float32)) / np.float32(np.sqrt(2.0))
    muscle_level = _per_epoch(rng, stages, _MUSCLE, mix) * scales["muscle"]
    x += _envelope(muscle_level, per_epoch) * muscle.reshape(epochs, per_epoch)
    x = x.ravel()

    def spindle(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(0.5, 2.0))
        f = traits["spindle_hz"] + r.uniform(-0.8, 0.8)
        return (r.uniform(20, 45) * np.hanning(len(t)) * np.sin(2 * np.pi * f * t)).astype(np.float32)

    def k_complex(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(0.6, 1.0))
        u = t / t[-1]
        wave = -np.sin(2 * np.pi * u) * np.exp(-((u - 0.4) ** 2) / 0.08)  # sharp negative then positive
        return (r.uniform(70, 140) * wave).astype(np.float32)

    def vertex(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(0.15, 0.3))
        return (-r.uniform(30, 70) * np.hanning(len(t)) ** 2).astype(np.float32)

    def sawtooth(r: np.random.Generator) -> np.ndarray:
        f, t = r.uniform(2.0, 5.0), _t(rate, r.uniform(1.0, 3.0))
        ramp = 2 * ((t * f) % 1.0) - 1  # slow rise, fast fall
        return (r.uniform(15, 35) * np.hanning(len(t)) * ramp).astype(np.float32)

    def blink(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(0.25, 0.45))
        return (r.uniform(50, 130) * np.hanning(len(t))).astype(np.float32)

    def rapid_eye(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(0.4, 1.0))
        u = t / t[-1]
        return (r.choice((-1, 1)) * r.uniform(40, 90) * np.sqrt(u) * (1 - u) * 2.6).astype(np.float32)

    def slow_eye(r: np.random.Generator) -> np.ndarray:
        t = _t(rate, r.uniform(2.0, 4.0))
        return (r.choice((-1, 1)) * r.uniform(25, 55) * np.sin(np.pi * t / t[-1])).astype(np.float32)

    blend = (1 - mix) + 0.0  # event rates blend like amplitudes
    for table, make in (
        (_SPINDLES, spindle),
        (_K_COMPLEXES, k_complex),
        (_VERTEX, vertex),
        (_SAWTOOTH, sawtooth),
        (_BLINKS, blink),
        (_RAPID_EYE, rapid_eye),
        (_SLOW_EYE, slow_eye),
    ):
        rates = blend * table[stages] + mix * table[_neighbour(stages)]
        if table is _RAPID_EYE:  # tonic REM: about a third of REM epochs without eye movements
            rates = rates * (rng.random(len(stages)) > 0.45)
        _events(rng, x, rates, rate, per_epoch, make)

    x = _recording(rng, x, rate, traits)
    emg = _per_epoch(rng, stages, _EMG_TONE, mix)
    emg_uv = np.repeat(emg, int(EPOCH_SECONDS * EMG_RATE)).astype(np.float32)
    emg_uv *= rng.lognormal(0.0, 0.15, len(emg_uv)).astype(np.float32)
    return SynthNight(
        signal_uv=x.astype(np.float32),
        rate=rate,
        stages=stages,
        shift=shift,
        subject=subject,
        emg_uv=emg_uv,
        traits=traits,
    )


def _recording(rng: np.random.Generator, x: np.ndarray, rate: float, traits: dict[str, Any]) -> np.ndarray:
    """The recording chain: line noise, baseline wander, electrode pops, then the amplifier gain."""
    n = len(x)
    if traits["line_hz"]:
        per_epoch = int(EPOCH_SECONDS * rate)
        epochs = n // per_epoch
        t = np.arange(n, dtype=np.float64) / rate
        phase = rng.uniform(np.pi / 4, 3 * np.pi / 4)  # away from zero so a Nyquist-aliased tone stays visible
        amp = _envelope(traits["line_uv"] * rng.uniform(0.8, 1.2, epochs), per_epoch).ravel()
        x = x + amp * (np.sqrt(2.0) * np.sin(2 * np.pi * traits["line_hz"] * t + phase)).astype(np.float32)
    if traits["wander_uv"]:
        per_epoch, sub_epoch = int(EPOCH_SECONDS * rate), int(EPOCH_SECONDS * SUB_RATE)
        epochs = n // per_epoch
        wander = _band_noise(rng, epochs * sub_epoch, SUB_RATE, 0.02, 0.3)
        x = x + traits["wander_uv"] * _upsample(wander, epochs, sub_epoch, per_epoch).ravel()
    if traits["pops_per_hour"]:
        pops = rng.poisson(traits["pops_per_hour"] * n / rate / 3600.0)
        for start in rng.integers(0, n, pops):
            t = _t(rate, rng.uniform(1.0, 3.0))
            wave = rng.choice((-1, 1)) * rng.uniform(300, 700) * np.exp(-t / rng.uniform(0.15, 0.5))
            stop = min(n, start + len(wave))
            x[start:stop] += wave[: stop - start].astype(np.float32)
    return x * np.float32(traits["gain"])


# ---------------------------------------------------------------------------------------------- files


def record_name(subject: int) -> str:
    """Sleep-EDF-style record name of a SYNTHETIC subject: ``synthetic-SC4ss1S0`` (night 1)."""
    if not 0 <= subject < MAX_SUBJECTS:
        raise DataError(f"synthetic subjects are numbered 0..{MAX_SUBJECTS - 1}, got {subject}")
    return f"synthetic-SC4{subject:02d}1S"


def default_shifts(subjects: int) -> list[str | None]:
    """Half the subjects clean (first), the others shifted, cycling through :data:`SHIFTS`."""
    clean = (subjects + 1) // 2
    return [None] * clean + [SHIFTS[i % len(SHIFTS)] for i in range(subjects - clean)]


def _physical_range(x: np.ndarray, floor: float) -> tuple[float, float]:
    top = max(floor, float(np.ceil(np.abs(x).max() * 1.05 / 100.0) * 100.0)) if len(x) else floor
    return (-top, top)


def _hypnogram_annotations(stages: np.ndarray) -> list[Any]:
    edfio = need("edfio", "writing EDF files")
    texts = {W: "Sleep stage W", N1: "Sleep stage 1", N2: "Sleep stage 2", N3: "Sleep stage 3", REM: "Sleep stage R"}
    notes = []
    start = 0
    for k in range(1, len(stages) + 1):
        if k == len(stages) or stages[k] != stages[start]:
            text = texts[int(stages[start])]
            notes.append(edfio.EdfAnnotation(start * EPOCH_SECONDS, (k - start) * EPOCH_SECONDS, text))
            start = k
    return notes


def write_night(night: SynthNight, out_dir: str | Path, subject: int, *, seed: int) -> SynthRecord:
    """Write one SYNTHETIC night as a Sleep-EDF-style EDF+ pair (PSG with EEG + 1-Hz EMG, hypnogram)."""
    edfio = need("edfio", "writing EDF files")
    out = Path(out_dir)
    name = record_name(subject)
    psg, hyp = out / f"{name}0-PSG.edf", out / f"{name}Y-Hypnogram.edf"
    patient = edfio.Patient(code=f"SYNTH{subject:03d}", name="SYNTHETIC", additional=("synthetic",))
    recording = edfio.Recording(
        startdate=dt.date(2000, 1, 1),
        hospital_administration_code="SYNTHETIC",
        investigator_technician_code="edgetta",
        equipment_code="synthetic",
        additional=(f"seed_{seed}", f"shift_{night.shift or 'none'}"[:24]),
    )
    start = dt.time(22, 30, 0)
    eeg = edfio.EdfSignal(
        night.signal_uv.astype(np.float64),
        night.rate,
        label=CHANNEL,
        transducer_type="synthetic",
        physical_dimension="uV",
        physical_range=_physical_range(night.signal_uv, 500.0),
        prefiltering="synthetic",
    )
    emg = edfio.EdfSignal(
        night.emg_uv.astype(np.float64),
        EMG_RATE,
        label=EMG_CHANNEL,
        transducer_type="synthetic",
        physical_dimension="uV",
        physical_range=_physical_range(night.emg_uv, 100.0),
        prefiltering="synthetic",
    )
    try:
        edfio.Edf(
            [eeg, emg], patient=patient, recording=recording, starttime=start, data_record_duration=EPOCH_SECONDS
        ).write(psg)
        edfio.Edf(
            [], patient=patient, recording=recording, starttime=start, annotations=_hypnogram_annotations(night.stages)
        ).write(hyp)
    except OSError as exc:
        raise OutputError(f"cannot write the synthetic night to {out} ({exc})") from exc
    return SynthRecord(subject, name, psg, hyp, night.shift, night.rate, len(night.stages))


def write_cohort(
    out_dir: str | Path,
    subjects: int,
    *,
    seed: int = 0,
    shifts: Sequence[str | None] | None = None,
    hours: float = 8.0,
) -> list[SynthRecord]:
    """Write ``subjects`` SYNTHETIC nights (EDF+ pairs readable by :func:`~edgetta.sleep.sleepedf.find_pairs`
    and :func:`~edgetta.sleep.sleepedf.read_night`) and ``cohort.json`` into ``out_dir``.

    ``shifts[i]`` is subject i's recording shift (None = clean); default: all clean."""
    if not 1 <= subjects <= MAX_SUBJECTS:
        raise DataError(f"subjects must be between 1 and {MAX_SUBJECTS}, got {subjects}")
    plan = [None] * subjects if shifts is None else list(shifts)
    if len(plan) != subjects:
        raise DataError(f"shifts names {len(plan)} subject(s) but subjects is {subjects}; give one per subject")
    for s in plan:
        if s is not None and s not in SHIFTS:
            raise DataError(f"unknown synthetic shift {s!r}; use one of {', '.join(SHIFTS)} (or None)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out} ({exc})") from exc
    records, entries = [], []
    for subject, shift in enumerate(plan):
        night = synth_night(subject, seed=seed, shift=shift, hours=hours)
        record = write_night(night, out, subject, seed=seed)
        records.append(record)
        counts = np.bincount(night.stages, minlength=len(STAGES))
        entries.append(
            {
                "subject": subject,
                "record_id": record.record_id,
                "psg": record.psg.name,
                "hypnogram": record.hypnogram.name,
                "shift": shift,
                "rate": night.rate,
                "epochs": record.epochs,
                "stage_epochs": dict(zip(STAGES, counts.tolist(), strict=True)),
                "traits": night.traits,
                "synthetic": True,
            }
        )
    manifest = {
        "synthetic": True,
        "description": "SYNTHETIC sleep EEG generated by edgetta.sleep.synth; not recorded from any person",
        "generator": "edgetta.sleep.synth",
        "seed": seed,
        "hours": hours,
        "channel": CHANNEL,
        "shifts": list(SHIFTS),
        "records": entries,
    }
    try:
        (out / "cohort.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {out / 'cohort.json'} ({exc})") from exc
    return records
