"""Sleep-EDF reading: pairing, R&K -> AASM mapping, dropping, wake trimming, channels, rates, CSV hypnograms.

The EDF+ pairs are generated here and follow Sleep-EDF's conventions: a PSG with several signals at different
rates, an annotation-only hypnogram with stages 3 and 4, wake inside the night, ``?`` and movement epochs,
long wake at both ends and a ``?`` tail past the end of the recording. The EEG of epoch k (30 s from the
start) holds the value k, so every epoch's content shows where it was cut from.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgetta.errors import DataError
from edgetta.sleep.sleepedf import Night, find_pairs, read_night, record_key, scan
from edgetta.sleep.stages import DROP, N1, N2, N3, REM, STAGES, UNKNOWN, W, annotation_stage, parse_stage

edfio = pytest.importorskip("edfio")
pytest.importorskip("scipy.signal")

# (annotation text, epochs): 140 W, sleep with S3+S4, wake inside, ?, movement, 160 W, then a ? tail.
RUNS = [
    ("Sleep stage W", 140),
    ("Sleep stage 1", 3),
    ("Sleep stage 2", 5),
    ("Sleep stage 3", 4),
    ("Sleep stage 4", 3),
    ("Sleep stage W", 2),
    ("Sleep stage 2", 2),
    ("Sleep stage ?", 1),
    ("Movement time", 1),
    ("Sleep stage R", 4),
    ("Sleep stage 2", 2),
    ("Sleep stage W", 160),
]
SCORED = sum(n for _, n in RUNS)  # 327 epochs
RECORDING = SCORED * 30 + 60  # two unscored epochs at the end (the ? tail)
# After dropping ? and movement and trimming wake to 30 min (60 epochs) either side of sleep:
EXPECTED = [W] * 60 + [N1] * 3 + [N2] * 5 + [N3] * 7 + [W] * 2 + [N2] * 2 + [REM] * 4 + [N2] * 2 + [W] * 60
FIRST_KEPT, DROPPED = 80, (159, 160)  # first kept epoch index; the ? and movement epochs


def epoch_level(t: np.ndarray) -> np.ndarray:
    """The EEG test signal: the index of the 30-s epoch that sample time t falls in."""
    return np.floor(t / 30.0)


def write_psg(
    path: Path,
    *,
    seconds: float = RECORDING,
    eeg_rate: float = 100.0,
    record: float = 30.0,
    start: dt.time = dt.time(22, 0, 0),
) -> Path:
    """A Sleep-EDF-like PSG: Fpz-Cz (epoch index), Pz-Oz (its negative + 1000), EOG, and 1-Hz signals."""

    def signal(label: str, rate: float, values: np.ndarray, low: float, high: float) -> object:
        return edfio.EdfSignal(values, rate, label=label, physical_dimension="uV", physical_range=(low, high))

    def times(rate: float) -> np.ndarray:
        return np.arange(round(seconds * rate)) / rate

    signals = [
        signal("EEG Fpz-Cz", eeg_rate, epoch_level(times(eeg_rate)), -2000, 2000),
        signal("EEG Pz-Oz", 100.0, 1000 - epoch_level(times(100.0)), -2000, 2000),
        signal("Resp oro-nasal", 1.0, np.sin(times(1.0)), -5, 5),
        signal("EMG submental", 1.0, np.ones(round(seconds)), -5, 5),
        signal("Temp rectal", 1.0, np.full(round(seconds), 37.0), 30, 40),
    ]
    edfio.Edf(signals, starttime=start, data_record_duration=record).write(path)
    return path


def write_hypnogram(path: Path, runs: list[tuple[str, int]] = RUNS, *, start: dt.time = dt.time(22, 0, 0)) -> Path:
    notes, onset = [], 0.0
    for text, epochs in runs:
        notes.append(edfio.EdfAnnotation(onset, epochs * 30.0, text))
        onset += epochs * 30.0
    notes.append(edfio.EdfAnnotation(onset, 3000.0, "Sleep stage ?"))  # past the end, as in Sleep-EDF
    edfio.Edf([], starttime=start, annotations=notes).write(path)
    return path


@pytest.fixture(scope="module")
def sc_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sleepedf")
    return write_psg(root / "SC4001E0-PSG.edf"), write_hypnogram(root / "SC4001EC-Hypnogram.edf")


def kept_indices() -> np.ndarray:
    return np.array([k for k in range(FIRST_KEPT, FIRST_KEPT + len(EXPECTED) + 2) if k not in DROPPED])


# ---------------------------------------------------------------------------------------------- stages


def test_rk_annotations_map_to_aasm() -> None:
    assert STAGES == ("W", "N1", "N2", "N3", "REM")
    expected = {"W": W, "1": N1, "2": N2, "3": N3, "4": N3, "R": REM, "?": DROP}
    for suffix, index in expected.items():
        assert annotation_stage(f"Sleep stage {suffix}") == index
    assert annotation_stage("Movement time") == DROP
    assert annotation_stage("Lights off") is None


def test_csv_stage_names() -> None:
    names = {"W": W, "n1": N1, "N2": N2, "n3": N3, "N4": N3, "rem": REM, "R": REM, "1": N1, "2": N2}
    names |= {"3": N3, "4": N3, "?": DROP, " wake ": W}
    for text, index in names.items():
        assert parse_stage(text) == index, text
    with pytest.raises(DataError, match=r"row 7.*'N5'"):
        parse_stage("N5", where="row 7")


# ---------------------------------------------------------------------------------------------- reading


def test_sleep_edf_night_epochs_labels_and_content(sc_pair: tuple[Path, Path]) -> None:
    psg, hyp = sc_pair
    night = read_night(psg, hyp)
    assert isinstance(night, Night)
    assert night.record_id == "SC4001"
    assert night.labels.dtype == np.int64 and night.labels.tolist() == EXPECTED
    assert night.eeg.dtype == np.float32 and night.eeg.shape == (len(EXPECTED), 3000)
    kept = kept_indices()
    np.testing.assert_array_equal(night.onsets, kept * 30.0)
    # each epoch's samples come from Fpz-Cz at its own 30 s, not from Pz-Oz or a neighbour
    np.testing.assert_allclose(night.eeg, np.repeat(kept[:, None], 3000, axis=1), atol=0.1)
    assert night.channel == "EEG Fpz-Cz" and night.rate == 100.0 and night.hypnogram_path == hyp


def test_other_channel_by_name_and_no_trimming(sc_pair: tuple[Path, Path]) -> None:
    psg, hyp = sc_pair
    night = read_night(psg, hyp, channel="eeg pz-oz", trim_wake_minutes=None)
    assert night.channel == "EEG Pz-Oz"
    assert len(night.labels) == SCORED - 2  # every scored epoch inside the recording but ? and movement
    assert night.labels[:140].tolist() == [W] * 140 and night.labels[-160:].tolist() == [W] * 160
    np.testing.assert_allclose(night.eeg[:, 0], 1000 - night.onsets / 30.0, atol=0.1)


def test_trimming_margin_is_configurable(sc_pair: tuple[Path, Path]) -> None:
    night = read_night(*sc_pair, trim_wake_minutes=5.0)
    assert night.labels.tolist() == [W] * 10 + EXPECTED[60:-60] + [W] * 10


def test_without_hypnogram_every_whole_epoch_unlabelled(sc_pair: tuple[Path, Path]) -> None:
    night = read_night(sc_pair[0])
    assert len(night.labels) == RECORDING // 30 and set(night.labels.tolist()) == {UNKNOWN}
    assert night.hypnogram_path is None
    np.testing.assert_allclose(night.eeg[:, -1], np.arange(RECORDING // 30), atol=0.1)


def test_resampled_channel_and_non_30s_records(tmp_path: Path) -> None:
    """A 200 Hz EEG in 20-s data records beside 100 Hz and 1 Hz signals is resampled to 100 Hz."""
    psg = write_psg(tmp_path / "ST7011J0-PSG.edf", eeg_rate=200.0, record=20.0, seconds=SCORED * 30 + 110)
    hyp = write_hypnogram(tmp_path / "ST7011JP-Hypnogram.edf")
    night = read_night(psg, hyp)
    assert night.record_id == "ST7011" and night.source_rate == 200.0 and night.rate == 100.0
    assert night.labels.tolist() == EXPECTED and night.eeg.shape == (len(EXPECTED), 3000)
    # away from the epoch edges (where the anti-aliasing filter rings) each epoch holds its own index
    np.testing.assert_allclose(night.eeg[:, 200:2800], np.repeat(kept_indices()[:, None], 2600, axis=1), atol=0.05)
    # a 128 Hz target rate works too (30 s = 3840 samples)
    assert read_night(psg, hyp, rate=128.0).eeg.shape == (len(EXPECTED), 3840)


def test_recording_shorter_than_hypnogram(tmp_path: Path) -> None:
    """A PSG that stops 10 s into epoch 227 keeps epochs 0..226; the partial one is dropped, not padded."""
    psg = write_psg(tmp_path / "SC4003E0-PSG.edf", seconds=227 * 30 + 10, record=10.0)
    night = read_night(psg, write_hypnogram(tmp_path / "SC4003E0-Hypnogram.edf"), trim_wake_minutes=None)
    assert len(night.labels) == 227 - 2 and night.onsets[-1] == 226 * 30.0
    assert read_night(psg).labels.shape == (227,)


def test_hypnogram_start_time_offset(tmp_path: Path) -> None:
    """A hypnogram starting 5 minutes after the PSG scores epochs 10 epochs later."""
    psg = write_psg(tmp_path / "SC4002E0-PSG.edf", seconds=SCORED * 30 + 600)
    hyp = write_hypnogram(tmp_path / "SC4002EH-Hypnogram.edf", start=dt.time(22, 5, 0))
    night = read_night(psg, hyp)
    assert night.labels.tolist() == EXPECTED
    np.testing.assert_array_equal(night.onsets, kept_indices() * 30.0 + 300.0)
    np.testing.assert_allclose(night.eeg[:, 0], kept_indices() + 10, atol=0.1)


def test_csv_hypnogram(tmp_path: Path, sc_pair: tuple[Path, Path]) -> None:
    names = {
        "Sleep stage W": "W",
        "Sleep stage 1": "n1",
        "Sleep stage 2": "2",
        "Sleep stage 3": "N3",
        "Sleep stage 4": "4",
        "Sleep stage R": "REM",
        "Sleep stage ?": "?",
        "Movement time": "movement",
    }
    rows, onset = ["onset;duration;stage"], 0
    for text, epochs in RUNS:
        rows.append(f"{onset};{epochs * 30};{names[text]}")
        onset += epochs * 30
    csv_path = tmp_path / "SC4001EC-Hypnogram.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    night = read_night(sc_pair[0], csv_path)
    assert night.labels.tolist() == EXPECTED
    bad = tmp_path / "bad.csv"
    bad.write_text("0,30,W\n30,30,N2\n60,30,deep\n")
    with pytest.raises(DataError, match=r"bad\.csv row 3.*'deep'"):
        read_night(sc_pair[0], bad)
    bad.write_text("0,30,W\nnoon,30,N2\n")
    with pytest.raises(DataError, match="row 2"):
        read_night(sc_pair[0], bad)


def test_generic_edf_with_stage_annotations_inside(tmp_path: Path) -> None:
    """An EDF+ file holding both the signal (in 10-s records) and its stage annotations, read by channel name."""
    rate = 50.0
    t = np.arange(int(300 * rate)) / rate
    notes = [edfio.EdfAnnotation(0, 120, "Sleep stage W"), edfio.EdfAnnotation(120, 60, "Sleep stage 2")]
    notes += [edfio.EdfAnnotation(180, 60, "Sleep stage R"), edfio.EdfAnnotation(240, 60, "Lights on")]
    signal = edfio.EdfSignal(epoch_level(t), rate, label="C3-A2", physical_range=(-100, 100))
    path = tmp_path / "night.edf"
    edfio.Edf([signal], data_record_duration=10, annotations=notes).write(path)
    night = read_night(path, path, channel="C3-A2", rate=50.0)
    assert night.labels.tolist() == [W, W, W, W, N2, N2, REM, REM]
    assert night.eeg.shape == (8, 1500) and night.record_id == "night"


def test_bad_inputs_name_the_problem(sc_pair: tuple[Path, Path], tmp_path: Path) -> None:
    psg, hyp = sc_pair
    with pytest.raises(DataError, match=r"'EEG C4'.*'EEG Fpz-Cz' \(100 Hz\).*'Temp rectal' \(1 Hz\)"):
        read_night(psg, hyp, channel="EEG C4")
    with pytest.raises(DataError, match="does not exist"):
        read_night(tmp_path / "missing-PSG.edf")
    with pytest.raises(DataError, match="not a readable EDF"):
        (tmp_path / "junk.edf").write_bytes(b"not an edf file at all")
        read_night(tmp_path / "junk.edf")
    overlap = tmp_path / "overlap-Hypnogram.edf"
    notes = [edfio.EdfAnnotation(0, 90, "Sleep stage W"), edfio.EdfAnnotation(60, 30, "Sleep stage 1")]
    edfio.Edf([], annotations=notes).write(overlap)
    with pytest.raises(DataError, match="overlapping"):
        read_night(psg, overlap)
    no_stages = tmp_path / "events-Hypnogram.edf"
    edfio.Edf([], annotations=[edfio.EdfAnnotation(0, 1, "Lights off")]).write(no_stages)
    with pytest.raises(DataError, match="no sleep-stage annotations"):
        read_night(psg, no_stages)
    with pytest.raises(DataError, match="whole number of samples"):
        read_night(psg, hyp, rate=100.0, epoch_seconds=30.005)


# ---------------------------------------------------------------------------------------------- pairing


def test_find_pairs_on_first_six_characters(tmp_path: Path) -> None:
    for name in ("SC4001E0-PSG.edf", "SC4002E0-PSG.edf", "ST7011J0-PSG.edf", "other-PSG.edf"):
        (tmp_path / name).write_bytes(b"")
    for name in ("SC4001EC-Hypnogram.edf", "ST7011JP-Hypnogram.edf", "SC4012EH-Hypnogram.edf"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "other-Hypnogram.csv").write_text("0,30,W\n")
    (tmp_path / "notes.txt").write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = find_pairs(tmp_path)
    found = {p.record_id: (p.psg.name, p.hypnogram.name if p.hypnogram else None) for p in pairs}
    assert found == {
        "SC4001": ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf"),
        "SC4002": ("SC4002E0-PSG.edf", None),  # PSG without hypnogram: kept, labels unknown
        "ST7011": ("ST7011J0-PSG.edf", "ST7011JP-Hypnogram.edf"),
        "other": ("other-PSG.edf", "other-Hypnogram.csv"),
    }
    assert [str(w.message) for w in caught if "SC4012EH-Hypnogram.edf" in str(w.message)]
    assert [p.name for p in scan(tmp_path).orphan_hypnograms] == ["SC4012EH-Hypnogram.edf"]
    assert record_key("SC4001E0") == "SC4001" and record_key("synthetic-SC4011S0") == "synthetic-SC4011"
    (tmp_path / "SC4001EJ-Hypnogram.edf").write_bytes(b"")
    with pytest.raises(DataError, match="same record 'SC4001'"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        find_pairs(tmp_path / "SC4001E0-PSG.edf")
