"""Per-epoch signal quality: clean sleep EEG of every stage passes; flat, clipped, mains, noisy and
out-of-range epochs are caught with the right reason."""

from __future__ import annotations

import numpy as np
import pytest

from edgetta.errors import DataError
from edgetta.sleep import synth
from edgetta.sleep.quality import DEFAULTS, REASONS, epoch_quality
from edgetta.sleep.stages import N3, STAGES


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    """Epochs [n, 3000] (uV, 100 Hz) and stages of two SYNTHETIC clean nights."""
    nights = [synth.synth_night(s, seed=11) for s in (1, 4)]
    epochs = np.concatenate([n.signal_uv.reshape(len(n.stages), -1) for n in nights])
    return epochs, np.concatenate([n.stages for n in nights])


def one_per_stage(clean: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The epoch of each stage with the largest peak-to-peak amplitude (the hardest to pass)."""
    epochs, stages = clean
    picks = []
    for k in range(len(STAGES)):
        idx = np.flatnonzero(stages == k)
        picks.append(idx[np.argmax(np.ptp(epochs[idx], axis=1))])
    return epochs[picks].astype(np.float64)


def test_clean_epochs_of_every_stage_pass(clean: tuple[np.ndarray, np.ndarray]) -> None:
    epochs, stages = clean
    report = epoch_quality(epochs, 100.0)
    assert report.ok.all(), report.counts()
    assert report.reasons == [None] * len(epochs) and report.flagged == 0
    assert set(stages.tolist()) == set(range(5))
    assert np.ptp(epochs[stages == N3], axis=1).max() > 200  # big slow waves are among them
    assert report.thresholds == DEFAULTS


def test_injected_artifacts_are_caught(clean: tuple[np.ndarray, np.ndarray]) -> None:
    base = one_per_stage(clean)
    rng = np.random.default_rng(0)
    t = np.arange(3000) / 100.0
    cases: list[tuple[str | None, np.ndarray]] = []
    for x in base:
        cases.append(("flat", np.zeros_like(x)))
        cases.append(("flat", np.full_like(x, 37.0) + rng.normal(0, 0.05, x.shape)))  # dead lead with an offset
        dead = x.copy()
        dead[1200:1500] = 0.0  # 3 s of nothing mid-epoch
        cases.append(("flat", dead))
        top = np.percentile(x, 90)
        cases.append(("clipping", np.minimum(x, top)))  # saturated at the top
        rail = x.copy()
        rail[2000:2030] = x.min()  # 0.3 s pinned at the bottom
        cases.append(("clipping", rail))
        long_rail = x.copy()
        long_rail[500:900] = x.max()  # 4 s saturated: a rail, not a dead lead
        cases.append(("clipping", long_rail))
        # a disconnected electrode: mostly mains, a little EEG through the leak
        cases.append(("line noise", 0.2 * x + 60 * np.sin(2 * np.pi * 60 * t + 1.0)))  # aliased to 40 Hz
        cases.append(("line noise", 0.2 * x + 60 * np.sin(2 * np.pi * 50.0 * t + 1.2)))  # at Nyquist
        hiss = np.diff(rng.normal(0, 40, len(x) + 1))  # disconnected electrode: broadband hiss, rms ~57 uV
        cases.append(("noise", 0.2 * x + hiss))
        cases.append(("noise", x + rng.normal(0, 250, x.shape)))  # white noise of 250 uV rms
        pop = x.copy()
        pop[1000:1300] += 800 * np.exp(-np.arange(300) / 40.0)  # electrode pop
        cases.append(("amplitude", pop))
    for x in base:  # mains carrying about 55 % of the power: below the mains threshold, and not broadband noise
        hum = np.sqrt(2 * 1.2 * x.var()) * np.sin(2 * np.pi * 60 * t)
        cases.append((None, x + hum))
    report = epoch_quality(np.stack([c for _, c in cases]), 100.0)
    assert report.reasons == [r for r, _ in cases]
    np.testing.assert_array_equal(report.ok, [r is None for r, _ in cases])
    counts = report.counts()
    assert set(counts) == set(REASONS) and counts["flat"] == 3 * len(base)


def test_other_rates_and_mains_at_128_hz(clean: tuple[np.ndarray, np.ndarray]) -> None:
    night = synth.synth_night(2, seed=5, hours=1.0, shift="rate")
    epochs = night.signal_uv.reshape(len(night.stages), -1)
    assert epoch_quality(epochs, night.rate).ok.all()
    t = np.arange(epochs.shape[1]) / night.rate
    mains = epochs[:3] + 100 * np.sin(2 * np.pi * 50 * t)
    assert epoch_quality(mains, night.rate).reasons == ["line noise"] * 3


def test_recording_shifts_are_not_artifacts() -> None:
    """Mild mains hum (60 Hz, aliased to 40 Hz at 100 Hz) and a flatter 1/f background are shifts, not bad epochs."""
    subject = next(s for s in range(50) if synth._traits(s, 3, "line_noise")["line_hz"] == 60.0)
    for shift in ("line_noise", "slope", "wander"):
        night = synth.synth_night(subject, seed=3, hours=1.5, shift=shift)
        report = epoch_quality(night.signal_uv.reshape(len(night.stages), -1), night.rate)
        assert report.flagged <= 1, (shift, report.counts())


def test_thresholds_are_keywords(clean: tuple[np.ndarray, np.ndarray]) -> None:
    epochs, stages = clean
    n3 = epochs[stages == N3][:50]
    strict = epoch_quality(n3, 100.0, amplitude_uv=60.0)
    assert strict.flagged > 25 and set(strict.counts()) == {"amplitude"}
    assert strict.thresholds["amplitude_uv"] == 60.0
    with pytest.raises(DataError, match="unknown quality threshold"):
        epoch_quality(n3, 100.0, amplitude=60.0)
    with pytest.raises(DataError, match="must be a number >= 0"):
        epoch_quality(n3, 100.0, flat_uv=-1)
    with pytest.raises(DataError, match=r"\[n_epochs, samples\]"):
        epoch_quality(np.zeros((2, 3, 4)), 100.0)
    with pytest.raises(DataError, match="rate"):
        epoch_quality(n3, 0.0)
    bad = n3[:2].copy()
    bad[0, 5] = np.nan
    assert epoch_quality(bad, 100.0).reasons == ["flat", None]
    assert epoch_quality(np.zeros((0, 3000)), 100.0).ok.shape == (0,)
