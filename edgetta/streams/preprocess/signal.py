"""Signal preprocessing: one epoch of a multichannel recording [C_source, n] to a model input [C, T].

Steps, in order: channel pick by name (the source's ``channels``), resampling to the model's rate
(``rate``; ``scipy.signal.resample_poly`` on each epoch), band-pass (``bandpass: [low, high]`` Hz,
Butterworth of ``filter_order`` as second-order sections at the model's rate), ``x * scale`` then
``(x - mean) / std`` per channel, and z-scoring (``zscore``: none, epoch, or running). Epochs are fixed
windows of ``epoch`` seconds (default: the model's T samples at ``rate``) cut by the source
(:class:`Epocher` for live streams).

Filtering, per ``filter``: ``zero_phase`` runs ``sosfiltfilt`` on each epoch alone (no phase shift, no
state, edge effects at epoch borders); ``causal`` runs ``sosfilt`` with its state carried from epoch to epoch
(a continuous filter, with the phase lag of a causal IIR). ``auto`` (default) is zero_phase for recorded
sources and causal for live ones.

The running z-score keeps exponential moving averages of each channel's mean and mean square (weight
``zscore_momentum`` per epoch; the first epoch initialises them) and normalises every epoch with the
averages after including it. Its state and the causal filter's are what :meth:`SignalPreprocessor.state`
returns (JSON), per position for the last ``history`` epochs, so a checkpoint taken at a committed item
resumes bit for bit.

Signal quality (``quality: true``, or a mapping of thresholds of :func:`edgetta.sleep.quality.epoch_quality`,
e.g. ``{amplitude_uv: 800}``; off by default) checks each channel of the epoch after the resampling, before
the band-pass and any normalisation, so on the source's physical units (microvolts for an EEG lead): flat
line, clipping, mains, broadband noise, amplitude. A flagged epoch is still prepared and yielded, with the
reason (:meth:`SignalPreprocessor.prepare`, ``Item.flag``; with several channels the first flagged channel
names it), but it does not update the running z-score: it is normalised with the statistics so far (the
first epoch of a stream, with none yet, with its own), exactly as ``edgetta sleep stage`` does. The causal
filter's state still runs through it (the signal is continuous in time).

An epoch that does not fit (a missing channel name, another channel count, a sampling rate the model does
not take with ``resample: false``, an irregular-rate stream, a length that does not resample to T) raises
:class:`Unusable`; the source records it as a skip, and the stream goes on.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from edgetta.errors import CheckpointError, ConfigError
from edgetta.streams.extras import need
from edgetta.streams.preprocess.base import (
    Normalisation,
    Unusable,
    item_shape,
    manifest_preprocess,
    read_normalisation,
)
from edgetta.streams.spec import SpecReader

SIGNAL_KEYS = (
    "rate",
    "resample",
    "epoch",
    "bandpass",
    "filter",
    "filter_order",
    "scale",
    "mean",
    "std",
    "zscore",
    "zscore_momentum",
    "quality",
)
FILTERS = ("auto", "zero_phase", "causal")
ZSCORES = ("none", "epoch", "running")
STATE_VERSION = 1
EPS = 1e-12


def pick_channels(labels: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices of ``wanted`` among ``labels``: exact match after stripping blanks, else case-insensitive."""
    stripped = [label.strip() for label in labels]
    lowered = [label.lower() for label in stripped]
    out = []
    for name in wanted:
        key = name.strip()
        if key in stripped:
            out.append(stripped.index(key))
        elif key.lower() in lowered:
            out.append(lowered.index(key.lower()))
        else:
            shown = ", ".join(stripped[:20]) + (", ..." if len(stripped) > 20 else "")
            raise Unusable(f"channel {name!r} is not in the stream (channels: {shown or 'no labels'})")
    return out


def resample_ratio(source: float, target: float) -> tuple[int, int] | None:
    """(up, down) with ``source * up / down == target`` within 1e-9 relative, or None when no small ratio fits."""
    ratio = Fraction(target / source).limit_denominator(1000)
    if ratio <= 0 or abs(source * ratio.numerator / ratio.denominator - target) > 1e-9 * target:
        return None
    return ratio.numerator, ratio.denominator


class SignalPreprocessor:
    """Epoch [C_source, n] at the source's rate -> float32 [C, T] for the model (see the module docstring)."""

    def __init__(
        self,
        *,
        channels: int,
        samples: int,
        pick: Sequence[str] | None = None,
        rate: float | None = None,
        resample: bool = True,
        epoch: float | None = None,
        bandpass: tuple[float | None, float | None] | None = None,
        filter: str = "zero_phase",
        filter_order: int = 4,
        norm: Normalisation | None = None,
        zscore: str = "none",
        zscore_momentum: float = 0.1,
        quality: Mapping[str, float] | None = None,
        history: int = 1024,
    ) -> None:
        if filter not in ("zero_phase", "causal"):
            raise ValueError(f"filter must be zero_phase or causal, got {filter!r}")
        if zscore not in ZSCORES:
            raise ValueError(f"zscore must be one of {ZSCORES}, got {zscore!r}")
        self.channels, self.samples = int(channels), int(samples)
        self.pick = list(pick) if pick else None
        self.rate, self.resample, self.epoch = rate, resample, epoch
        self.bandpass, self.filter, self.filter_order = bandpass, filter, int(filter_order)
        self.norm, self.zscore, self.momentum = norm or Normalisation(), zscore, float(zscore_momentum)
        self.quality = None if quality is None else dict(quality)  # epoch_quality thresholds; None: no check
        self.history = int(history)
        self._sos: dict[float, np.ndarray] = {}
        self._zi: np.ndarray | None = None  # causal filter state [sections, C, 2]
        self._moments: tuple[np.ndarray, np.ndarray] | None = None  # running mean and mean square [C]
        self._count = 0
        self._snapshots: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()  # the source's thread prepares epochs while a daemon thread checkpoints
        if bandpass is not None or (rate is not None and resample):
            need("scipy.signal", "signal filtering and resampling")

    @property
    def stateful(self) -> bool:
        return self.zscore == "running" or (self.bandpass is not None and self.filter == "causal")

    def epoch_samples(self, source_rate: float) -> int:
        """Samples per epoch at ``source_rate``: ``epoch`` seconds, else T samples at the model's rate."""
        if self.epoch is not None:
            return max(1, round(self.epoch * source_rate))
        if self.rate is not None:
            return max(1, round(self.samples / self.rate * source_rate))
        return self.samples

    def __call__(
        self, data: np.ndarray, *, rate: float, labels: Sequence[str] | None = None, position: Any = None
    ) -> np.ndarray:
        """The model input for one epoch ``data`` [C_source, n] sampled at ``rate`` Hz with channel ``labels``.

        Raises :class:`Unusable` with the reason when it does not fit; the state (and its snapshot at
        ``position``) then stays as it was."""
        return self.prepare(data, rate=rate, labels=labels, position=position)[0]

    def prepare(
        self, data: np.ndarray, *, rate: float, labels: Sequence[str] | None = None, position: Any = None
    ) -> tuple[np.ndarray, str | None]:
        """As :meth:`__call__`, with the signal-quality reason (None when the epoch passed or ``quality`` is off)."""
        with self._lock:
            try:
                return self._prepare(np.asarray(data, dtype=np.float64), float(rate), labels)
            finally:
                self._mark(position)

    def _prepare(self, x: np.ndarray, rate: float, labels: Sequence[str] | None) -> tuple[np.ndarray, str | None]:
        if x.ndim != 2:
            raise Unusable(f"epoch of shape {x.shape} is not [channels, samples]")
        names = list(labels) if labels is not None else None
        if self.pick is not None:
            names = list(self.pick)
            if labels is None:
                raise Unusable(f"the stream has no channel labels, so channels {self.pick} cannot be picked")
            if len(labels) != x.shape[0]:
                raise Unusable(f"the stream names {len(labels)} channels but sends {x.shape[0]}")
            x = x[pick_channels(labels, self.pick)]
        if x.shape[0] != self.channels:
            raise Unusable(
                f"{x.shape[0]} channel(s), the model takes {self.channels}; pick channels by name with source.channels"
            )
        if not (rate > 0 and math.isfinite(rate)):
            raise Unusable(f"the stream has no regular sampling rate (nominal {rate:g} Hz); the model needs one")
        x = self._resample(x, rate)
        model_rate = self.rate or rate
        flag = self._check(x, model_rate, names)
        x = self._filter(x, model_rate)
        x = self.norm.apply(x, channel_axis=0, dtype=np.float64)
        return self._zscore(x, update=flag is None).astype(np.float32), flag

    def _check(self, x: np.ndarray, rate: float, names: Sequence[str] | None) -> str | None:
        """The first flagged channel's signal-quality reason (``edgetta.sleep.quality``), None when all pass."""
        if self.quality is None:
            return None
        from edgetta.sleep.quality import epoch_quality

        report = epoch_quality(x, rate, **self.quality)
        for i, reason in enumerate(report.reasons):
            if not report.ok[i]:
                reason = reason or "bad signal"
                if len(x) == 1:
                    return reason
                name = names[i] if names is not None and i < len(names) else f"channel {i}"
                return f"{name}: {reason}"
        return None

    def _resample(self, x: np.ndarray, rate: float) -> np.ndarray:
        if self.rate is not None and abs(rate - self.rate) > 1e-9 * self.rate:
            if not self.resample:
                raise Unusable(
                    f"signal sampled at {rate:g} Hz, the model takes {self.rate:g} Hz (preprocess.rate); "
                    "set preprocess.resample: true or stream at that rate"
                )
            ratio = resample_ratio(rate, self.rate)
            if ratio is None:
                raise Unusable(f"no resampling ratio with a denominator <= 1000 maps {rate:g} Hz to {self.rate:g} Hz")
            x = need("scipy.signal", "resampling").resample_poly(x, ratio[0], ratio[1], axis=-1)
        if x.shape[1] != self.samples:
            raise Unusable(
                f"epoch has {x.shape[1]} samples at the model's rate, the model takes {self.samples}; "
                "set preprocess.epoch (seconds) and preprocess.rate to match"
            )
        return x

    def _design(self, rate: float) -> np.ndarray:
        sos = self._sos.get(rate)
        if sos is None:
            low, high = self.bandpass or (None, None)
            nyquist = rate / 2
            if high is not None and high >= nyquist:
                raise Unusable(f"band-pass upper edge {high:g} Hz is not below the Nyquist frequency {nyquist:g} Hz")
            butter = need("scipy.signal", "band-pass filtering").butter
            if low is not None and high is not None:
                sos = butter(self.filter_order, [low, high], btype="bandpass", fs=rate, output="sos")
            elif low is not None:
                sos = butter(self.filter_order, low, btype="highpass", fs=rate, output="sos")
            else:
                sos = butter(self.filter_order, high, btype="lowpass", fs=rate, output="sos")
            self._sos[rate] = sos
        return sos

    def _filter(self, x: np.ndarray, rate: float) -> np.ndarray:
        if self.bandpass is None:
            return x
        signal = need("scipy.signal", "band-pass filtering")
        sos = self._design(rate)
        if self.filter == "zero_phase":
            return signal.sosfiltfilt(sos, x, axis=-1)
        if self._zi is None:  # steady state for the first sample: no start-up transient
            self._zi = signal.sosfilt_zi(sos)[:, None, :] * x[None, :, :1]
        y, self._zi = signal.sosfilt(sos, x, axis=-1, zi=self._zi)
        return y

    def _zscore(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        """``update=False`` (a flagged epoch): normalise with the running statistics so far and leave them
        unchanged (with none yet, with the epoch's own)."""
        if self.zscore == "none":
            return x
        mean, square = x.mean(axis=1), (x * x).mean(axis=1)
        if self.zscore == "running" and update:
            if self._moments is None:
                self._moments = (mean, square)
            else:
                m = self.momentum
                self._moments = ((1 - m) * self._moments[0] + m * mean, (1 - m) * self._moments[1] + m * square)
            self._count += 1
            mean, square = self._moments
        elif self.zscore == "running" and self._moments is not None:
            mean, square = self._moments
        var = np.maximum(square - mean * mean, 0.0)
        return (x - mean[:, None]) / np.sqrt(var + EPS)[:, None]

    # ------------------------------------------------------------------ state for checkpoints

    def mark(self, position: Any) -> None:
        """Remember the state right after the item at ``position`` (for :meth:`state` ``after=``): a source calls
        this for an item it could not even read, so that every position it yields has a state."""
        with self._lock:
            self._mark(position)

    def _mark(self, position: Any) -> None:
        if position is None or not self.stateful:
            return
        self._snapshots[position] = self._state()
        self._snapshots.move_to_end(position)
        while len(self._snapshots) > self.history:
            self._snapshots.popitem(last=False)

    def state(self, after: Any = None) -> dict[str, Any]:
        """JSON-able state: now, or right after the item at position ``after`` (one of the last ``history``
        items this preprocessor saw). Pass it to :meth:`load_state` of a fresh preprocessor with the same
        configuration, with the source opened at the next position, to resume exactly."""
        with self._lock:
            if after is None or not self.stateful:
                return self._state()
            if after not in self._snapshots:
                raise CheckpointError(
                    f"no preprocessing state kept for position {after!r} (the last {self.history} items are kept); "
                    "checkpoint a recently yielded position"
                )
            return copy.deepcopy(self._snapshots[after])

    def _state(self) -> dict[str, Any]:
        moments = None
        if self._moments is not None:
            moments = {"mean": self._moments[0].tolist(), "square": self._moments[1].tolist(), "count": self._count}
        return {
            "version": STATE_VERSION,
            "zscore": moments,
            "filter": None if self._zi is None else {"zi": self._zi.tolist()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; a CheckpointError names what does not fit this configuration."""
        with self._lock:
            self._load_state(state)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"signal preprocessing state is malformed ({type(exc).__name__}: {exc})") from exc

    def _restore(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise CheckpointError(f"signal preprocessing state must be a mapping with version {STATE_VERSION}")
        moments, filt = state.get("zscore"), state.get("filter")
        if moments is not None:
            if self.zscore != "running":
                raise CheckpointError("the checkpoint has a running z-score but preprocess.zscore is not running")
            mean, square = (np.asarray(moments[k], np.float64) for k in ("mean", "square"))
            if mean.shape != (self.channels,) or square.shape != (self.channels,):
                raise CheckpointError(
                    f"running z-score state has {mean.shape} channels, the model takes {self.channels}"
                )
            self._moments, self._count = (mean, square), int(moments.get("count", 0))
        else:
            self._moments, self._count = None, 0
        if filt is not None:
            if self.bandpass is None or self.filter != "causal":
                raise CheckpointError("the checkpoint has a causal filter state but no causal band-pass is configured")
            zi = np.asarray(filt["zi"], np.float64)
            if zi.ndim != 3 or zi.shape[1:] != (self.channels, 2):
                raise CheckpointError(f"filter state of shape {zi.shape} does not fit {self.channels} channel(s)")
            self._zi = zi
        else:
            self._zi = None
        self._snapshots.clear()

    def to_json(self) -> dict[str, Any]:
        """The settings in effect (defaults resolved), for logs and summaries."""
        return {
            "channels": self.pick,
            "rate": self.rate,
            "resample": self.resample,
            "epoch": self.epoch,
            "bandpass": None if self.bandpass is None else list(self.bandpass),
            "filter": self.filter if self.bandpass is not None else None,
            "filter_order": self.filter_order,
            **self.norm.to_json(),
            "zscore": self.zscore,
            "zscore_momentum": self.momentum,
            "quality": self.quality,
            "output_shape": [self.channels, self.samples],
        }


class Epocher:
    """Cuts a live stream's chunks [n, C] into consecutive epochs [C, length]; positions count samples.

    ``push`` returns ``(first_sample, epoch, last_timestamp)`` for every epoch completed; the remainder
    waits for the next chunk. ``first`` is the sample counter of the first sample pushed."""

    def __init__(self, length: int, first: int = 0) -> None:
        self.length = int(length)
        self.next_sample = int(first)
        self._parts: list[np.ndarray] = []
        self._times: list[np.ndarray] = []
        self._pending = 0

    @property
    def received(self) -> int:
        """The sample counter after everything pushed so far (a partial epoch included)."""
        return self.next_sample + self._pending

    def push(self, chunk: np.ndarray, timestamps: np.ndarray | None = None) -> list[tuple[int, np.ndarray, float]]:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim == 1:
            chunk = chunk[:, None]
        if not len(chunk):
            return []
        times = np.full(len(chunk), np.nan) if timestamps is None else np.asarray(timestamps, np.float64)
        self._parts.append(chunk)
        self._times.append(times)
        self._pending += len(chunk)
        out = []
        if self._pending < self.length:
            return out
        data, stamps = np.concatenate(self._parts), np.concatenate(self._times)
        done = (len(data) // self.length) * self.length
        for start in range(0, done, self.length):
            epoch = data[start : start + self.length].T.copy()
            out.append((self.next_sample, epoch, float(stamps[start + self.length - 1])))
            self.next_sample += self.length
        self._parts, self._times = [data[done:]], [stamps[done:]]
        self._pending = len(data) - done
        return out


def _bandpass(reader: SpecReader, rate: float | None) -> tuple[float | None, float | None] | None:
    value = reader.raw("bandpass")
    if value is None:
        return None
    wanted = "[low, high] in Hz (null for a high-pass or low-pass edge), or null for no filter"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise reader.error("bandpass", f"must be {wanted}, got {value!r}")
    low, high = (None if v is None else reader.check_number("bandpass", v, above=0.0) for v in value)
    if low is None and high is None:
        raise reader.error("bandpass", f"must be {wanted}; both edges are null")
    if low is not None and high is not None and not low < high:
        raise reader.error("bandpass", f"low edge {low:g} Hz must be below the high edge {high:g} Hz")
    if rate is not None and high is not None and high >= rate / 2:
        raise reader.error("bandpass", f"high edge {high:g} Hz must be below half the model's rate ({rate / 2:g} Hz)")
    return (low, high)


def _quality(reader: SpecReader) -> dict[str, float] | None:
    """``quality``: false/absent (off), true (the default thresholds) or a mapping of threshold overrides."""
    value = reader.raw("quality")
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise reader.error("quality", f"must be true, false or a mapping of thresholds, got {value!r}")
    from edgetta.sleep.quality import DEFAULTS

    unknown = sorted(set(map(str, value)) - set(DEFAULTS))
    if unknown:
        raise reader.error("quality", f"unknown threshold(s) {unknown}; the thresholds are {sorted(DEFAULTS)}")
    return {str(k): reader.check_number(f"quality.{k}", v, minimum=0.0) for k, v in value.items()}


def signal_preprocessor(
    config: Mapping[str, Any] | None,
    artifact: Any,
    *,
    live: bool,
    channels: Sequence[str] | None = None,
    where: str = "preprocess",
) -> SignalPreprocessor:
    """A :class:`SignalPreprocessor` from the ``preprocess`` mapping of a source spec and the artifact (input
    shape (None, C, T); ``rate``, ``scale``, ``mean``, ``std`` and ``zscore`` default to what its manifest records).

    ``live`` picks the causal filter for ``filter: auto``; ``channels`` are the names the source picks."""
    reader = SpecReader(config, where, SIGNAL_KEYS)
    dims = item_shape(artifact, where)
    if len(dims) != 2:
        raise ConfigError(
            f"{where}: signal sources give [channels, samples] inputs but the model takes {list(dims)} per row; "
            "use an image source (video, camera, rtsp, images) or npz/npy arrays for this model"
        )
    n_channels, samples = dims
    if channels is not None and len(channels) != n_channels:
        raise ConfigError(
            f"{where}: {len(channels)} channel(s) picked ({list(channels)}) but the model takes {n_channels}"
        )
    recorded = manifest_preprocess(artifact)
    rate = reader.number("rate", None, above=0.0, meaning="the model's sampling rate in Hz")
    if rate is None and isinstance(recorded.get("rate"), (int, float)) and recorded["rate"] > 0:
        rate = float(recorded["rate"])
    resample = reader.boolean("resample", True)
    epoch = reader.number("epoch", None, above=0.0, meaning="epoch length in seconds")
    if epoch is not None and rate is not None and abs(epoch * rate - samples) > 1e-6:
        raise reader.error(
            "epoch", f"{epoch:g} s at {rate:g} Hz is {epoch * rate:g} samples but the model takes {samples}"
        )
    bandpass = _bandpass(reader, rate)
    mode = reader.choice("filter", FILTERS, "auto")
    if mode == "auto":
        mode = "causal" if live else "zero_phase"
    order = reader.number("filter_order", 4, minimum=1, maximum=12, integer=True)
    norm = read_normalisation(reader, recorded, n_channels, required=False, hint="")
    default_z = recorded.get("zscore") if recorded.get("zscore") in ZSCORES else "none"
    zscore = reader.choice("zscore", ZSCORES, default_z)
    momentum = reader.number("zscore_momentum", 0.1, above=0.0, maximum=1.0)
    quality = _quality(reader)
    reader.finish()
    return SignalPreprocessor(
        channels=n_channels,
        samples=samples,
        pick=channels,
        rate=rate,
        resample=resample,
        epoch=epoch,
        bandpass=bandpass,
        filter=mode,
        filter_order=order,
        norm=norm,
        zscore=zscore or "none",
        zscore_momentum=momentum,
        quality=quality,
    )
