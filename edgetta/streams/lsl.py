"""A Lab Streaming Layer inlet (pylsl) for live EEG and sensor streams, cut into fixed-length epochs.

The stream is resolved by name and/or type (``resolve_timeout`` per try, retried with backoff and jitter
until found or ``close()``), chunks are pulled and cut into epochs of ``preprocess.epoch_samples(rate)``
samples at the stream's nominal rate (:class:`~edgetta.streams.preprocess.Epocher`), and each epoch goes
through the :class:`~edgetta.streams.preprocess.SignalPreprocessor` (channel pick by the labels in the stream's
``desc/channels``, resampling, causal band-pass by default, running z-score). An epoch that does not fit
(channel count, missing label, irregular or mismatched rate) is an error item; the stream goes on.

``live = True``. Positions are sample counters: the index of an epoch's first sample among all samples
received, continuing across reconnects (samples of a partial epoch at a disconnect are counted and dropped) and,
with ``after=``, after a restart. Samples sent while the source is down, and items in flight at a crash, are
lost. The inlet buffers up to ``buffer`` seconds while the consumer is busy; beyond that LSL drops the oldest.
Item timestamps are the wall-clock time of an epoch's last sample (LSL clock synchronisation applied).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgetta.streams.backoff import Backoff, EventHook, notify
from edgetta.streams.extras import need
from edgetta.streams.items import Item
from edgetta.streams.preprocess.base import Unusable
from edgetta.streams.preprocess.signal import Epocher, SignalPreprocessor


def predicate(name: str | None, type_: str | None) -> str:
    """The LSL XPath predicate that selects streams by name and/or type."""
    parts = [f"{key}='{value}'" for key, value in (("name", name), ("type", type_)) if value]
    if not parts:
        raise ValueError("give the stream's name or type (or both)")
    if any("'" in value for value in (name or "", type_ or "")):
        raise ValueError("stream names and types cannot contain a quote (')")
    return " and ".join(parts)


def channel_labels(info: Any) -> list[str] | None:
    """Channel labels from a full StreamInfo's ``desc/channels/channel/label``; None when absent or incomplete."""
    labels = []
    channel = info.desc().child("channels").child("channel")
    while not channel.empty():
        labels.append(channel.child_value("label"))
        channel = channel.next_sibling()
    if len(labels) != info.channel_count() or not all(labels):
        return None
    return labels


class LslSource:
    """Epochs of a live LSL stream (see the module docstring).

    ``on_event(kind, message)`` hears "connected", "not_found", "disconnected" and "gave_up"."""

    live = True
    kind = "lsl"

    def __init__(
        self,
        preprocess: SignalPreprocessor,
        *,
        stream_name: str | None = None,
        stream_type: str | None = None,
        resolve_timeout: float = 10.0,
        buffer: float = 360.0,
        chunk_timeout: float = 0.2,
        backoff: Backoff | None = None,
        after: int | None = None,
        on_event: EventHook | None = None,
        name: str | None = None,
    ) -> None:
        self.pylsl = need("pylsl", "Lab Streaming Layer sources")
        self.query = predicate(stream_name, stream_type)
        self.preprocessor = preprocess
        self.resolve_timeout, self.buffer, self.chunk_timeout = resolve_timeout, buffer, chunk_timeout
        self.backoff = backoff or Backoff()
        self.after = after
        self.on_event = on_event
        self.name = name or f"lsl:{self.query}"
        self.total = None
        self.rate: float | None = None
        self.labels: list[str] | None = None
        self.text = False
        self.connects = 0
        self._stop = threading.Event()

    def _resolve(self) -> Any | None:
        """A connected inlet, retrying with backoff; None when closed or out of attempts."""
        failures = 0
        while not self._stop.is_set():
            found = self.pylsl.resolve_bypred(self.query, 1, self.resolve_timeout)
            problem = f"no stream found in {self.resolve_timeout:g} s"
            if found:
                try:
                    return self._open(found[0])
                except Exception as exc:  # noqa: BLE001 - the outlet vanished between resolve and connect
                    problem = f"found but could not connect ({exc})"
            failures += 1
            notify(self.on_event, "not_found", f"{self.name}: {problem}")
            if self.backoff.exhausted(failures) or not self.backoff.wait(self._stop, failures - 1):
                return None
        return None

    def _open(self, found: Any) -> Any:
        inlet = self.pylsl.StreamInlet(
            found, max_buflen=max(1, int(round(self.buffer))), recover=True, processing_flags=self.pylsl.proc_clocksync
        )
        try:
            info = inlet.info(self.resolve_timeout)
        except Exception:
            inlet.close_stream()
            raise
        self.rate = float(info.nominal_srate())
        self.labels = channel_labels(info)
        self.text = info.channel_format() == self.pylsl.cf_string
        self.connects += 1
        notify(self.on_event, "connected", f"{self.name}: {info.channel_count()} channels at {self.rate:g} Hz")
        return inlet

    def _epoch_length(self) -> int:
        rate = self.rate or 0.0
        return self.preprocessor.epoch_samples(rate) if rate > 0 else self.preprocessor.samples

    def _item(self, first: int, epoch: np.ndarray, stamp: float) -> Item:
        wall = stamp + (time.time() - self.pylsl.local_clock()) if np.isfinite(stamp) else time.time()
        try:
            x, flag = self.preprocessor.prepare(epoch, rate=self.rate or 0.0, labels=self.labels, position=first)
        except Unusable as exc:
            return Item(None, timestamp=wall, position=first, error=f"{self.name}: samples {first}+: {exc}")
        return Item(x, timestamp=wall, position=first, flag=flag)

    def __iter__(self) -> Iterator[Item]:
        counter: int | None = None
        lost_error = getattr(getattr(self.pylsl, "util", None), "LostError", RuntimeError)
        while not self._stop.is_set():
            inlet = self._resolve()
            if inlet is None:
                if not self._stop.is_set():
                    message = f"{self.name}: gave up after {self.backoff.attempts} failed attempts to resolve"
                    notify(self.on_event, "gave_up", message)
                    yield Item(None, position=counter or 0, error=message)
                return
            if self.text:  # a marker stream: nothing to epoch, and it will not change
                inlet.close_stream()
                message = f"{self.name}: the stream carries text (markers), not signal samples; resolve a signal stream"
                notify(self.on_event, "gave_up", message)
                yield Item(None, position=counter or 0, error=message)
                return
            length = self._epoch_length()
            if counter is None:
                counter = 0 if self.after is None else int(self.after) + length
            epocher = Epocher(length, first=counter)
            try:
                while not self._stop.is_set():
                    try:
                        data, stamps = inlet.pull_chunk(timeout=self.chunk_timeout, max_samples=max(length, 1024))
                    except lost_error:
                        notify(self.on_event, "disconnected", f"{self.name}: stream lost; resolving again")
                        break
                    if not data:
                        continue
                    for first, epoch, stamp in epocher.push(np.asarray(data, dtype=np.float64), np.asarray(stamps)):
                        yield self._item(first, epoch, stamp)
            finally:
                counter = epocher.received
                inlet.close_stream()

    def close(self) -> None:
        """Stop after the current pull (``chunk_timeout``) or resolve wait."""
        self._stop.set()
