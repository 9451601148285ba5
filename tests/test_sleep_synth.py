"""The SYNTHETIC sleep cohort: sleep architecture, per-stage EEG content, recording shifts, EDF+ round trip."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetta.errors import DataError
from edgetta.sleep import synth
from edgetta.sleep.stages import N1, N2, N3, REM, W

edfio = pytest.importorskip("edfio")
pytest.importorskip("scipy.signal")


def band_power(epochs: np.ndarray, rate: float, low: float, high: float) -> np.ndarray:
    """Mean power per epoch within [low, high) Hz."""
    freqs = np.fft.rfftfreq(epochs.shape[1], 1.0 / rate)
    power = np.abs(np.fft.rfft(epochs, axis=1)) ** 2
    return power[:, (freqs >= low) & (freqs < high)].sum(axis=1) / epochs.shape[1] ** 2


def runs(stages: np.ndarray, stage: int) -> list[tuple[int, int]]:
    """(start, length) of the runs of ``stage``."""
    out, start = [], None
    for k, s in enumerate(np.append(stages, -1)):
        if s == stage and start is None:
            start = k
        elif s != stage and start is not None:
            out.append((start, k - start))
            start = None
    return out


@pytest.fixture(scope="module")
def night() -> synth.SynthNight:
    return synth.synth_night(3, seed=0)


def test_hypnograms_have_sleep_architecture() -> None:
    for subject in range(12):
        stages = synth.synth_hypnogram(np.random.default_rng([0, subject, 100]), 8.0)
        assert len(stages) == 960
        share = np.bincount(stages, minlength=5) / len(stages)
        assert 0.10 <= share[W] <= 0.22 and 0.02 <= share[N1] <= 0.08, share
        assert 0.40 <= share[N2] <= 0.56 and 0.11 <= share[N3] <= 0.21 and 0.14 <= share[REM] <= 0.27, share
        assert (stages[:60] == W).all() and (stages[-30:] == W).all()  # long wake at both ends
        first, last = np.flatnonzero(stages != W)[[0, -1]]
        assert (stages[first:last] == W).sum() >= 4  # awakenings inside the night
        n3, rem = np.flatnonzero(stages == N3), np.flatnonzero(stages == REM)
        assert (n3 < 480).mean() > 0.75 and (rem >= 480).mean() > 0.55  # N3 early, REM later
        periods: list[list[int]] = []  # REM periods: REM runs less than 15 min apart belong together
        for start, length in runs(stages, REM):
            if periods and start - periods[-1][1] < 30:
                periods[-1][1] = start + length
            else:
                periods.append([start, start + length])
        assert 3 <= len(periods) <= 6  # one REM period per ~90-min cycle
        gaps = np.diff([start for start, _ in periods])
        assert np.median(gaps) * 30 / 60 > 70  # cycles of 70+ minutes


def test_stage_content(night: synth.SynthNight) -> None:
    epochs = night.signal_uv.reshape(len(night.stages), -1)
    rate, stages = night.rate, night.stages

    def mean(values: np.ndarray, stage: int) -> float:
        return float(np.median(values[stages == stage]))

    total = band_power(epochs, rate, 0.3, 45)
    alpha = band_power(epochs, rate, 8, 12) / total
    delta = band_power(epochs, rate, 0.5, 2)
    sigma = band_power(epochs, rate, 11.5, 15.5) / total
    theta = band_power(epochs, rate, 4, 8) / total
    assert mean(alpha, W) > 2 * max(mean(alpha, s) for s in (N1, N2, N3, REM))
    assert mean(delta, N3) > 3 * mean(delta, N2) > 3 * mean(delta, W)
    assert mean(sigma, N2) > 1.8 * max(mean(sigma, s) for s in (N1, N3, REM))  # spindles
    assert mean(theta, N1) > 1.3 * mean(theta, W) and mean(theta, REM) > 1.3 * mean(theta, W)
    rms = epochs.std(axis=1)
    assert mean(rms, REM) < mean(rms, N2) < mean(rms, N3)
    peak_to_peak = np.ptp(epochs, axis=1)
    assert mean(peak_to_peak, N3) > 150  # high-amplitude delta, well over 75 uV
    # stages overlap: within-stage spread is large (not trivially separable)
    assert np.std(np.log(delta[stages == N2])) > 0.4


def test_shifts_change_the_recording() -> None:
    clean = synth.synth_night(5, seed=1, hours=1.0)
    epochs = clean.signal_uv.reshape(len(clean.stages), -1)
    assert clean.shift is None and clean.rate == 100.0 and clean.synthetic
    shifted = {s: synth.synth_night(5, seed=1, hours=1.0, shift=s) for s in synth.SHIFTS}
    for name, n in shifted.items():
        assert n.shift == name
        np.testing.assert_array_equal(n.stages, clean.stages)  # same night, other recording
    gain = shifted["gain"].traits["gain"] / clean.traits["gain"]
    assert gain > 1.7 or gain < 0.6
    assert shifted["gain"].signal_uv.std() / clean.signal_uv.std() == pytest.approx(gain, rel=0.02)
    wake = clean.stages == W
    alpha_hz = shifted["alpha_freq"].traits["alpha_hz"]
    assert alpha_hz < 8.1 or alpha_hz > 11.9
    spectrum = np.abs(np.fft.rfft(shifted["alpha_freq"].signal_uv.reshape(len(wake), -1)[wake], axis=1)).mean(0)
    freqs = np.fft.rfftfreq(3000, 0.01)
    band = (freqs > 6.5) & (freqs < 13.5)
    assert abs(freqs[band][np.argmax(spectrum[band])] - alpha_hz) < 0.7
    slope = shifted["slope"].traits["slope"]
    ratio_clean = band_power(epochs, 100, 20, 40).mean() / band_power(epochs, 100, 1, 4).mean()
    x = shifted["slope"].signal_uv.reshape(len(wake), -1)
    ratio = band_power(x, 100, 20, 40).mean() / band_power(x, 100, 1, 4).mean()
    assert (ratio > 1.5 * ratio_clean) if slope < 1.5 else (ratio < ratio_clean / 1.5)
    line = shifted["line_noise"]
    alias = line.traits["line_hz"] if line.traits["line_hz"] <= 50 else 100 - line.traits["line_hz"]
    x = line.signal_uv.reshape(len(wake), -1)
    assert (
        band_power(x, 100, alias - 0.5, alias + 0.6).mean()
        > 20 * band_power(epochs, 100, alias - 0.5, alias + 0.6).mean()
    )
    x = shifted["wander"].signal_uv.reshape(len(wake), -1)
    assert band_power(x, 100, 0.0, 0.35).mean() > 5 * band_power(epochs, 100, 0.0, 0.35).mean()
    assert np.abs(shifted["pops"].signal_uv).max() > 1.5 * np.abs(clean.signal_uv).max()
    for name in ("rate", "mixed"):
        n = shifted[name]
        assert n.rate in (128.0, 200.0) and len(n.signal_uv) == len(n.stages) * 30 * n.rate
    with pytest.raises(DataError, match="unknown synthetic shift 'blur'"):
        synth.synth_night(0, seed=0, shift="blur")


def test_deterministic_by_seed() -> None:
    a = synth.synth_night(2, seed=7, hours=0.5, shift="pops")
    b = synth.synth_night(2, seed=7, hours=0.5, shift="pops")
    c = synth.synth_night(2, seed=8, hours=0.5, shift="pops")
    np.testing.assert_array_equal(a.signal_uv, b.signal_uv)
    np.testing.assert_array_equal(a.stages, b.stages)
    assert not np.array_equal(a.signal_uv, c.signal_uv)
    assert not np.array_equal(a.signal_uv, synth.synth_night(3, seed=7, hours=0.5).signal_uv)


def test_cohort_round_trip_and_marked_synthetic(tmp_path: Path) -> None:
    from edgetta.sleep.sleepedf import find_pairs, read_night

    records = synth.write_cohort(tmp_path, 2, seed=4, shifts=[None, "rate"], hours=1.0)
    assert [r.shift for r in records] == [None, "rate"] and all(r.synthetic for r in records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no orphan hypnograms
        pairs = find_pairs(tmp_path)
    assert [p.psg for p in pairs] == [r.psg for r in records]
    assert [p.hypnogram for p in pairs] == [r.hypnogram for r in records]
    for record in records:
        assert "synthetic" in record.psg.name and "synthetic" in record.hypnogram.name
        assert record.psg.name.endswith("0-PSG.edf") and record.hypnogram.name.endswith("-Hypnogram.edf")
        edf = edfio.read_edf(record.psg)
        assert "SYNTHETIC" in edf.local_patient_identification
        assert "SYNTHETIC" in edf.local_recording_identification
        assert {s.label: s.sampling_frequency for s in edf.signals} == {
            "EEG Fpz-Cz": record.rate,
            "EMG submental": 1.0,
        }
        night = synth.synth_night(record.subject, seed=4, shift=record.shift, hours=1.0)
        read = read_night(record.psg, record.hypnogram, trim_wake_minutes=None)
        np.testing.assert_array_equal(read.labels, night.stages)
        assert read.eeg.shape == (len(night.stages), 3000) and read.source_rate == record.rate
        if record.rate == 100.0:
            np.testing.assert_allclose(read.eeg.ravel(), night.signal_uv, atol=0.05)
        trimmed = read_night(record.psg, record.hypnogram, trim_wake_minutes=2.0)
        assert trimmed.labels[:4].tolist() == [W] * 4 and trimmed.labels[4] != W
        assert trimmed.labels[-4:].tolist() == [W] * 4 and trimmed.labels[-5] != W
    cohort = json.loads((tmp_path / "cohort.json").read_text())
    assert cohort["synthetic"] is True and "SYNTHETIC" in cohort["description"]
    assert [e["shift"] for e in cohort["records"]] == [None, "rate"]
    assert [e["rate"] for e in cohort["records"]] == [100.0, records[1].rate]
    assert all(e["synthetic"] is True for e in cohort["records"])
    assert cohort["shifts"] == list(synth.SHIFTS)


def test_cohort_arguments_checked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one per subject"):
        synth.write_cohort(tmp_path, 3, shifts=[None], hours=0.5)
    with pytest.raises(DataError, match="unknown synthetic shift 'noise'"):
        synth.write_cohort(tmp_path, 1, shifts=["noise"], hours=0.5)
    with pytest.raises(DataError, match="subjects must be between"):
        synth.write_cohort(tmp_path, 0)
    assert synth.default_shifts(5) == [None, None, None, "gain", "alpha_freq"]
