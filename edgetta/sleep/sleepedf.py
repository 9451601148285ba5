"""Sleep-EDF Expanded (and generic EDF/EDF+) nights as 30-s epochs of one EEG channel with AASM labels.

Pairing (:func:`find_pairs`): Sleep-EDF names a night ``SC4ssN?0-PSG.edf`` (cassette) or ``ST7ssN?0-PSG.edf``
(telemetry) and its hypnogram ``SC4ssN??-Hypnogram.edf``, whose last letter varies, so the two are paired on
the first 6 characters of the record name (``SC4ssN``). Other names pair on everything before ``-PSG`` /
``-Hypnogram``; a hypnogram may be EDF+ or CSV. A PSG without hypnogram is kept (labels unknown); a
hypnogram without PSG is reported (a warning from :func:`find_pairs`, a list from :func:`scan`).

Reading (:func:`read_night`): the channel is picked by name; signals at other rates in the file are never
read. The channel is resampled to ``rate`` (``scipy.signal.resample_poly``) when its rate differs; the
data-record duration of the file does not matter. Epochs follow the hypnogram: each stage annotation of
``d`` seconds at ``onset`` scores ``floor(d / 30)`` epochs at ``onset + 30 k`` (seconds from the PSG's start,
shifted by the difference of the two files' start times). Labels map R&K -> AASM (stages 3 and 4 -> N3,
see :mod:`edgetta.sleep.stages`); ``?`` and movement epochs, and epochs not wholly inside the recording, are
dropped. Wake is then trimmed to ``trim_wake_minutes`` before the first and after the last sleep epoch (the
DeepSleepNet / TinySleepNet convention, Supratak et al. 2017; 30 min = 60 epochs each side). Without a
hypnogram every whole epoch from the start is kept, labelled -1, untrimmed.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import DataError
from edgetta.sleep.stages import DROP, UNKNOWN, W, annotation_stage, parse_stage
from edgetta.streams.extras import need
from edgetta.streams.preprocess.base import Unusable
from edgetta.streams.preprocess.signal import pick_channels, resample_ratio

DEFAULT_CHANNEL = "EEG Fpz-Cz"
_SLEEP_EDF_ID = re.compile(r"^(?P<key>(?:.*[-_])?(?:SC|ST)\d{4})[A-Za-z0-9]{2}$", re.IGNORECASE)
_PSG = re.compile(r"^(?P<stem>.+)-PSG\.edf$", re.IGNORECASE)
_HYPNOGRAM = re.compile(r"^(?P<stem>.+)-Hypnogram\.(?:edf|csv)$", re.IGNORECASE)
_MICROVOLTS = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
_TOLERANCE = 1e-6  # seconds


@dataclass(frozen=True)
class RecordPair:
    """One night: its PSG file and its hypnogram (None when the night has no hypnogram)."""

    record_id: str
    psg: Path
    hypnogram: Path | None


@dataclass(frozen=True)
class Listing:
    """What :func:`scan` found: the pairs (PSG with or without hypnogram) and hypnograms without a PSG."""

    pairs: list[RecordPair]
    orphan_hypnograms: list[Path]


@dataclass
class Night:
    """Epochs of one channel of one night, with their AASM labels (-1 = unknown) and onsets."""

    record_id: str
    eeg: np.ndarray  # float32 [n_epochs, rate * epoch_seconds], microvolts
    labels: np.ndarray  # int64 [n_epochs], class index of STAGES, -1 = unknown
    onsets: np.ndarray  # float64 [n_epochs], seconds from the PSG's start
    rate: float
    channel: str
    psg_path: Path
    hypnogram_path: Path | None
    epoch_seconds: float = 30.0
    source_rate: float = 0.0  # the channel's rate in the file, before resampling


def record_key(stem: str) -> str:
    """Pairing key of a name without its ``-PSG`` / ``-Hypnogram`` suffix: ``SC4ssN`` for Sleep-EDF names
    (``SC4ssN??`` / ``ST7ssN??``, with any prefix kept), else the whole stem."""
    match = _SLEEP_EDF_ID.match(stem)
    return match.group("key") if match else stem


def scan(directory: str | Path) -> Listing:
    """Pair the ``*-PSG.edf`` and ``*-Hypnogram.edf|csv`` files of ``directory`` (not recursive) by record key."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; give the folder holding the *-PSG.edf files")
    psgs: dict[str, Path] = {}
    hypnograms: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if not path.is_file():
            continue
        for pattern, found in ((_PSG, psgs), (_HYPNOGRAM, hypnograms)):
            match = pattern.match(path.name)
            if match:
                key = record_key(match.group("stem"))
                if key in found:
                    raise DataError(
                        f"{found[key].name} and {path.name} in {root} belong to the same record {key!r}; "
                        "keep one of them"
                    )
                found[key] = path
    pairs = [RecordPair(key, psg, hypnograms.get(key)) for key, psg in sorted(psgs.items())]
    orphans = [path for key, path in sorted(hypnograms.items()) if key not in psgs]
    return Listing(pairs, orphans)


def find_pairs(directory: str | Path) -> list[RecordPair]:
    """The nights of ``directory`` (see :func:`scan`); hypnograms without a PSG are reported as a warning."""
    listing = scan(directory)
    if listing.orphan_hypnograms:
        names = ", ".join(p.name for p in listing.orphan_hypnograms)
        warnings.warn(f"hypnogram(s) without a PSG file in {directory}: {names}", stacklevel=2)
    return listing.pairs


def _open_edf(path: Path, what: str) -> Any:
    edfio = need("edfio", "reading EDF files")
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        return edfio.read_edf(path, lazy_load_data=True)
    except Exception as exc:  # noqa: BLE001 - edfio raises ValueError and others for malformed headers
        raise DataError(f"{path} is not a readable EDF/EDF+ file ({exc})") from exc


def _start(edf: Any) -> tuple[dt.date | None, dt.time | None]:
    try:
        date = edf.startdate
    except Exception:  # noqa: BLE001 - anonymised ('X') or malformed start date
        date = None
    try:
        time = edf.starttime
    except Exception:  # noqa: BLE001
        time = None
    return date, time


def _start_offset(psg: Any, hypnogram: Any) -> float:
    """Seconds to add to the hypnogram's onsets to express them from the PSG's start (0 when unknown)."""
    (d1, t1), (d2, t2) = _start(psg), _start(hypnogram)
    if t1 is None or t2 is None:
        return 0.0
    if d1 is not None and d2 is not None:
        return (dt.datetime.combine(d2, t2) - dt.datetime.combine(d1, t1)).total_seconds()
    seconds = (dt.datetime.combine(dt.date.min, t2) - dt.datetime.combine(dt.date.min, t1)).total_seconds()
    return (seconds + 43200.0) % 86400.0 - 43200.0  # same night: within +-12 h


def _microvolts(dimension: str) -> float:
    return _MICROVOLTS.get(dimension.strip().lower(), 1.0)


def read_scoring(path: str | Path, *, psg_edf: Any = None) -> list[tuple[float, float, int]]:
    """(onset s, duration s, stage index or DROP) of a hypnogram: EDF+ annotations or CSV rows.

    Onsets are from the PSG's start (``psg_edf``, an edfio Edf, gives the start-time offset of an EDF+
    hypnogram). EDF+ annotations that are not stage texts (lights off, arousals) are ignored."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    edf = _open_edf(path, "hypnogram")
    offset = _start_offset(psg_edf, edf) if psg_edf is not None else 0.0
    scoring = []
    for note in edf.annotations:
        stage = annotation_stage(note.text)
        if stage is None:
            continue
        if note.duration is None:
            raise DataError(
                f"{path}: annotation {note.text!r} at {note.onset:g} s has no duration; "
                "stage annotations need one (the epochs it scores)"
            )
        scoring.append((float(note.onset) + offset, float(note.duration), stage))
    if not scoring:
        texts = sorted({n.text for n in edf.annotations})[:8]
        raise DataError(
            f"{path} has no sleep-stage annotations (found {texts or 'none'}); expected texts like "
            "'Sleep stage W', 'Sleep stage 1'..'4', 'Sleep stage R'"
        )
    return scoring


def _read_csv(path: Path) -> list[tuple[float, float, int]]:
    """Rows ``onset, duration, stage`` (seconds, seconds, name); a header row and ``;`` or tab separators are fine."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"hypnogram {path} cannot be read ({exc})") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"hypnogram {path} is empty; expected rows of onset, duration, stage")
    delimiter = max(",;\t", key=lines[0].count)
    scoring = []
    for row_number, row in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        cells = [c.strip() for c in row]
        where = f"{path.name} row {row_number}"
        if len(cells) < 3:
            raise DataError(f"{where}: {row!r} has {len(cells)} column(s); expected onset, duration, stage")
        try:
            onset, duration = float(cells[0]), float(cells[1])
        except ValueError:
            if row_number == 1:  # a header
                continue
            raise DataError(f"{where}: onset {cells[0]!r} and duration {cells[1]!r} must be seconds") from None
        if not (math.isfinite(onset) and math.isfinite(duration)) or duration < 0:
            raise DataError(f"{where}: onset {onset:g} s and duration {duration:g} s must be finite, duration >= 0")
        scoring.append((onset, duration, parse_stage(cells[2], where=where)))
    if not scoring:
        raise DataError(f"hypnogram {path} has no rows of onset, duration, stage")
    return scoring


def score_epochs(
    scoring: Sequence[tuple[float, float, int]], *, epoch_seconds: float, recording_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, labels) of the scored epochs wholly inside ``[0, recording_seconds]``, ``?``/movement dropped."""
    onsets: list[float] = []
    labels: list[int] = []
    for onset, duration, stage in scoring:
        count = int(math.floor(duration / epoch_seconds + _TOLERANCE))
        for k in range(count):
            onsets.append(onset + k * epoch_seconds)
            labels.append(stage)
    on = np.asarray(onsets, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    order = np.argsort(on, kind="stable")
    on, lab = on[order], lab[order]
    overlap = np.flatnonzero(np.diff(on) < epoch_seconds - _TOLERANCE)
    if overlap.size:
        k = int(overlap[0])
        raise DataError(
            f"the hypnogram scores overlapping epochs at {on[k]:g} s and {on[k + 1]:g} s; "
            f"stage annotations must not overlap ({epoch_seconds:g}-s epochs)"
        )
    keep = (lab != DROP) & (on >= -_TOLERANCE) & (on + epoch_seconds <= recording_seconds + _TOLERANCE)
    return on[keep], lab[keep]


def trim_wake(onsets: np.ndarray, labels: np.ndarray, minutes: float | None) -> np.ndarray:
    """Mask of the epochs within ``minutes`` of wake before the first and after the last sleep epoch.

    Kept: onsets in ``[first_sleep - minutes, last_sleep + minutes]`` (inclusive, by time, so 30 min keeps 60
    wake epochs each side when they were scored). All kept when ``minutes`` is None or nothing is sleep."""
    keep = np.ones(len(labels), dtype=bool)
    sleep = np.flatnonzero((labels != W) & (labels >= 0))
    if minutes is None or not sleep.size:
        return keep
    margin = float(minutes) * 60.0
    first, last = onsets[sleep[0]], onsets[sleep[-1]]
    return (onsets >= first - margin - _TOLERANCE) & (onsets <= last + margin + _TOLERANCE)


def _channel(edf: Any, path: Path, channel: str) -> Any:
    signals = [s for s in edf.signals]
    try:
        (index,) = pick_channels([s.label for s in signals], [channel])
    except Unusable as exc:
        shown = ", ".join(f"{s.label.strip()!r} ({s.sampling_frequency:g} Hz)" for s in signals)
        raise DataError(
            f"{path}: channel {channel!r} is not in the file; its channels are {shown or 'none'}. "
            "Pick one with channel=... (--channel)"
        ) from exc
    return signals[index]


def _resampled(data: np.ndarray, source: float, rate: float, path: Path) -> np.ndarray:
    if abs(source - rate) <= 1e-9 * rate:
        return data
    ratio = resample_ratio(source, rate)
    if ratio is None:
        raise DataError(f"{path}: no resampling ratio with a denominator <= 1000 maps {source:g} Hz to {rate:g} Hz")
    return need("scipy.signal", "resampling").resample_poly(data, ratio[0], ratio[1])


def read_night(
    psg_path: str | Path,
    hypnogram: str | Path | None = None,
    *,
    channel: str = DEFAULT_CHANNEL,
    rate: float = 100.0,
    epoch_seconds: float = 30.0,
    trim_wake_minutes: float | None = 30.0,
    record_id: str | None = None,
) -> Night:
    """One night of ``channel`` as epochs at ``rate`` Hz with labels from ``hypnogram`` (see the module docstring)."""
    path = Path(psg_path)
    if not (rate > 0 and math.isfinite(rate)):
        raise DataError(f"rate must be a positive number of Hz, got {rate!r}")
    if not (epoch_seconds > 0 and math.isfinite(epoch_seconds)):
        raise DataError(f"epoch_seconds must be positive, got {epoch_seconds!r}")
    samples = round(rate * epoch_seconds)
    if abs(samples - rate * epoch_seconds) > 1e-6:
        raise DataError(f"{epoch_seconds:g}-s epochs at {rate:g} Hz are not a whole number of samples")
    if trim_wake_minutes is not None and trim_wake_minutes < 0:
        raise DataError(f"trim_wake_minutes must be >= 0 or None, got {trim_wake_minutes!r}")
    edf = _open_edf(path, "PSG file")
    signal = _channel(edf, path, channel)
    source = float(signal.sampling_frequency)
    if not source > 0:
        raise DataError(f"{path}: channel {channel!r} has no sampling rate ({source:g} Hz)")
    try:
        raw = np.asarray(signal.data, dtype=np.float64) * _microvolts(signal.physical_dimension)
    except Exception as exc:  # noqa: BLE001 - a truncated or damaged data section
        raise DataError(f"{path}: the samples of {channel!r} cannot be read ({exc})") from exc
    data = _resampled(raw, source, float(rate), path)
    recording = len(raw) / source
    if hypnogram is None:
        count = int(math.floor(len(data) / samples))
        onsets = np.arange(count, dtype=np.float64) * epoch_seconds
        labels = np.full(count, UNKNOWN, dtype=np.int64)
    else:
        hyp = Path(hypnogram)
        scoring = read_scoring(hyp, psg_edf=edf)
        onsets, labels = score_epochs(scoring, epoch_seconds=epoch_seconds, recording_seconds=recording)
        if not len(onsets):
            raise DataError(
                f"{hyp} scores no stage epoch inside the {recording:g} s of {path.name}; "
                "check that the hypnogram belongs to this recording"
            )
        keep = trim_wake(onsets, labels, trim_wake_minutes)
        onsets, labels = onsets[keep], labels[keep]
    starts = np.round(onsets * rate).astype(np.int64)
    starts = np.minimum(starts, max(0, len(data) - samples))
    index = starts[:, None] + np.arange(samples)[None, :]
    eeg = data[index].astype(np.float32) if len(starts) else np.zeros((0, samples), np.float32)
    return Night(
        record_id=record_id or record_key(_PSG.sub(r"\g<stem>", path.name) if _PSG.match(path.name) else path.stem),
        eeg=eeg,
        labels=labels,
        onsets=onsets,
        rate=float(rate),
        channel=signal.label.strip(),
        psg_path=path,
        hypnogram_path=None if hypnogram is None else Path(hypnogram),
        epoch_seconds=float(epoch_seconds),
        source_rate=source,
    )
