"""EDF+ replay on real files written with edfio: a 100 Hz EEG channel beside a 1 Hz signal, epoching, exact resume
with the preprocessor's state, resampling, and real-time pace."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

edfio = pytest.importorskip("edfio", reason="EDF sources need edfio: pip install 'edgetta[eeg]'")
pytest.importorskip("scipy.signal", reason="signal preprocessing needs scipy: pip install 'edgetta[eeg]'")

from edgetta.errors import ConfigError, DataError  # noqa: E402
from edgetta.streams import open_source  # noqa: E402

SLEEP = SimpleNamespace(input_shape=(None, 1, 3000), preprocess={})  # 30 s at 100 Hz
EPOCHS, LEFTOVER = 6, 1200


def eeg_signal(rate: float, n: int) -> np.ndarray:
    """A 1.5 Hz sine plus a level that steps by 5 uV every 30 s (so each epoch is recognisable)."""
    t = np.arange(n) / rate
    return 10 * np.sin(2 * np.pi * 1.5 * t) + 5 * np.floor(t / 30)


def write_edf(path: Path, rate: int = 100, extra: list | None = None) -> np.ndarray:
    n = EPOCHS * 30 * rate + LEFTOVER * rate // 100
    eeg = eeg_signal(rate, n)
    seconds = n // rate
    temperature = 1000 + np.arange(seconds, dtype=np.float64)  # far outside the EEG's range
    signals = [
        edfio.EdfSignal(eeg, rate, label="EEG Fpz-Cz", physical_range=(-100, 100)),
        edfio.EdfSignal(temperature, 1, label="Temp rectal", physical_range=(0, 2000)),
        *(extra or []),
    ]
    stages = [edfio.EdfAnnotation(30.0 * k, 30.0, "Sleep stage W" if k < 2 else "Sleep stage 1") for k in range(EPOCHS)]
    edfio.Edf(signals, annotations=stages).write(path)  # annotations make it EDF+ (an "EDF Annotations" signal)
    assert edfio.read_edf(path).reserved == "EDF+C"
    return eeg


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("edf") / "night.edf"
    return path, write_edf(path)


def spec(path: Path, **extra) -> dict:
    return {"kind": "edf", "path": str(path), "channels": "EEG Fpz-Cz", **extra}


def test_epochs_of_the_named_channel_only(recording):
    path, eeg = recording
    source = open_source(spec(path), stream="psg", artifact=SLEEP)
    assert source.live is False and source.rate == 100 and source.total == EPOCHS + 1
    items = list(source)
    assert [it.position for it in items] == list(range(EPOCHS + 1))
    for k, item in enumerate(items[:EPOCHS]):
        assert item.error is None and item.x.shape == (1, 3000) and item.x.dtype == np.float32
        # 16-bit EDF over +-100 uV: 0.0015 uV steps; the 1 Hz signal (1000+) is never mixed in
        np.testing.assert_allclose(item.x[0], eeg[k * 3000 : (k + 1) * 3000], atol=0.002)
    last = items[EPOCHS]
    assert last.x is None and "incomplete (1200 of 3000 samples)" in last.error


def test_resume_from_an_epoch_with_the_preprocessor_state(recording):
    """Running z-score (state carried across epochs) and a zero-phase band-pass: a run resumed after epoch 2 with
    the state recorded there (through JSON) yields exactly what the uninterrupted run yielded from epoch 3."""
    path, _ = recording
    config = spec(path, preprocess={"bandpass": [0.3, 35], "zscore": "running", "zscore_momentum": 0.3})
    source = open_source(config, stream="psg", artifact=SLEEP)
    full = list(source)
    saved = json.loads(json.dumps(source.preprocessor.state(after=2)))
    resumed_source = open_source(config, stream="psg", artifact=SLEEP, after=2)
    resumed_source.preprocessor.load_state(saved)
    resumed = list(resumed_source)
    assert [it.position for it in resumed] == list(range(3, EPOCHS + 1))
    for got, want in zip(resumed[:-1], full[3:-1]):
        np.testing.assert_array_equal(got.x, want.x)
    # without the state the z-score restarts from epoch 3 alone: different inputs
    fresh = list(open_source(config, stream="psg", artifact=SLEEP, start=3))
    assert not np.array_equal(fresh[1].x, full[4].x)


def test_resampled_channel_and_a_refused_rate(tmp_path):
    path = tmp_path / "fast.edf"
    write_edf(path, rate=200)
    items = list(open_source(spec(path, preprocess={"rate": 100}), stream="psg", artifact=SLEEP))
    assert [it.error is None for it in items] == [True] * EPOCHS + [False]
    expected = eeg_signal(100, 3000 * EPOCHS)
    for k, item in enumerate(items[:EPOCHS]):  # resample_poly keeps a 1.5 Hz sine; edges of each epoch excepted
        np.testing.assert_allclose(item.x[0, 100:-100], expected[k * 3000 + 100 : (k + 1) * 3000 - 100], atol=0.05)
    refused = list(open_source(spec(path, preprocess={"rate": 100, "resample": False}), stream="psg", artifact=SLEEP))
    assert all(it.x is None for it in refused)
    assert "sampled at 200 Hz, the model takes 100 Hz" in refused[0].error
    # a 200 Hz file with no model rate known gives epochs of 3000 samples = 15 s, the model's T at the file's rate
    assert open_source(spec(path), stream="psg", artifact=SLEEP).epoch_seconds == 15


def test_channel_errors_name_the_labels(tmp_path, recording):
    path, _ = recording
    with pytest.raises(DataError, match="'EEG Pz-Oz' is not in the stream .*EEG Fpz-Cz, Temp rectal"):
        open_source(spec(path, channels="EEG Pz-Oz"), stream="psg", artifact=SLEEP)
    two = SimpleNamespace(input_shape=(None, 2, 3000), preprocess={})
    with pytest.raises(DataError, match="different sampling rates .*EEG Fpz-Cz 100 Hz, Temp rectal 1 Hz"):
        open_source(spec(path, channels=["EEG Fpz-Cz", "Temp rectal"]), stream="psg", artifact=two)
    with pytest.raises(ConfigError, match=r"streams\[psg\]\.source\.preprocess: 1 channel\(s\) picked .* takes 2"):
        open_source(spec(path), stream="psg", artifact=two)
    with pytest.raises(ConfigError, match=r"streams\[psg\]\.source: missing key 'channels'"):
        open_source({"kind": "edf", "path": str(path)}, stream="psg", artifact=SLEEP)
    with pytest.raises(ConfigError, match=r"streams\[psg\]\.source\.pace: must be one of realtime, fast"):
        open_source(spec(path, pace="slow"), stream="psg", artifact=SLEEP)
    junk = tmp_path / "junk.edf"
    junk.write_text("not an EDF file")
    with pytest.raises(DataError, match="not a readable EDF"):
        open_source(spec(junk), stream="psg", artifact=SLEEP)


def test_two_channels_case_insensitive(tmp_path):
    path = tmp_path / "two.edf"
    n = EPOCHS * 3000 + LEFTOVER
    other = edfio.EdfSignal(-eeg_signal(100, n), 100, label="EEG Pz-Oz", physical_range=(-100, 100))
    eeg = write_edf(path, extra=[other])
    two = SimpleNamespace(input_shape=(None, 2, 3000), preprocess={})
    item = next(iter(open_source(spec(path, channels=["eeg pz-oz", "EEG Fpz-Cz"]), stream="psg", artifact=two)))
    np.testing.assert_allclose(item.x, np.stack([-eeg[:3000], eeg[:3000]]), atol=0.002)


def test_realtime_pace(recording):
    """Short epochs (0.1 s at 100 Hz): real-time pace spaces them by 0.1 s, fast does not wait."""
    path, _ = recording
    short = SimpleNamespace(input_shape=(None, 1, 10), preprocess={"rate": 100})
    started = time.monotonic()
    source = open_source(spec(path, pace="realtime"), stream="psg", artifact=short)
    it = iter(source)
    got = [next(it) for _ in range(8)]
    elapsed = time.monotonic() - started
    source.close()
    assert [g.position for g in got] == list(range(8)) and 0.75 <= elapsed < 3
    started = time.monotonic()
    fast = iter(open_source(spec(path, pace="fast"), stream="psg", artifact=short))
    [next(fast) for _ in range(8)]
    assert time.monotonic() - started < 0.5
