"""EDF/EDF+ replay (edfio): named channels cut into fixed-length epochs, at real-time pace or as fast as possible.

Only the signals named in ``channels`` are read; they must share one sampling rate, and signals at other
rates in the same file (a 1 Hz temperature beside 100 Hz EEG) are never touched. Each epoch is
``preprocess.epoch_samples(rate)`` samples of those signals (physical units, e.g. uV) handed to the
:class:`~edgetta.streams.preprocess.SignalPreprocessor`, which resamples, filters and normalises it.

Positions are epoch indices from 0 (epoch k covers seconds ``[k * epoch, (k + 1) * epoch)`` of the
recording); ``start=k`` yields epoch k first, so a resumed replay (with the preprocessor's state loaded from
the checkpoint) yields exactly the items of an uninterrupted one. A trailing partial epoch is an error item
at the last position, never a silently shorter input. ``pace="realtime"`` yields epoch k when its last
sample would have been recorded (``epoch`` seconds apart); ``"fast"`` as fast as the consumer takes them.
EDF+D (discontinuous) files are read as if their data records were contiguous.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.extras import need
from edgetta.streams.items import Item
from edgetta.streams.preprocess.base import Unusable
from edgetta.streams.preprocess.signal import SignalPreprocessor, pick_channels

PACES = ("realtime", "fast")


class EdfSource:
    """Epochs of the ``channels`` of an EDF/EDF+ file (see the module docstring). ``live = False``."""

    live = False
    kind = "edf"

    def __init__(
        self,
        path: str | Path,
        preprocess: SignalPreprocessor,
        *,
        channels: Sequence[str],
        pace: str = "fast",
        start: int = 0,
        name: str | None = None,
    ) -> None:
        edfio = need("edfio", "EDF sources")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(
                f"EDF file {self.path} does not exist" + (" (it is a directory)" if self.path.is_dir() else "")
            )
        if pace not in PACES:
            raise ValueError(f"pace must be one of {PACES}, got {pace!r}")
        if not channels:
            raise DataError(f"{self.path}: name the channel(s) to read")
        if start < 0:
            raise DataError(f"{self.path}: start must be an epoch index >= 0, got {start}")
        try:
            self.edf = edfio.read_edf(self.path, lazy_load_data=True)
        except Exception as exc:  # noqa: BLE001 - edfio raises ValueError and others for malformed headers
            raise DataError(f"{self.path} is not a readable EDF/EDF+ file ({exc})") from exc
        self.preprocessor = preprocess
        self.pace, self.start = pace, int(start)
        self.name = name or str(self.path)
        self.signals = self._signals(list(channels))
        self.labels = [s.label.strip() for s in self.signals]
        self.rate = float(self.signals[0].sampling_frequency)
        self.epoch_samples = preprocess.epoch_samples(self.rate)
        self.samples = min(int(s.samples_per_data_record) for s in self.signals) * int(self.edf.num_data_records)
        self.epochs, self.leftover = divmod(self.samples, self.epoch_samples)
        self._stop = threading.Event()

    def _signals(self, channels: list[str]) -> list[Any]:
        signals = list(self.edf.signals)
        labels = [s.label for s in signals]
        try:
            picked = [signals[i] for i in pick_channels(labels, channels)]
        except Unusable as exc:
            raise DataError(f"{self.path}: {exc}") from exc
        rates = {float(s.sampling_frequency) for s in picked}
        if len(rates) > 1:
            shown = ", ".join(f"{s.label.strip()} {s.sampling_frequency:g} Hz" for s in picked)
            raise DataError(
                f"{self.path}: the channels have different sampling rates ({shown}); pick channels at one rate"
            )
        return picked

    @property
    def epoch_seconds(self) -> float:
        return self.epoch_samples / self.rate

    @property
    def total(self) -> int:
        """Items to yield from ``start``: whole epochs, plus one error item for a trailing partial epoch."""
        return max(0, self.epochs + (1 if self.leftover else 0) - self.start)

    def read(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch`` of the picked channels, [channels, samples] float64 in physical units."""
        first, stop = epoch * self.epoch_samples, (epoch + 1) * self.epoch_samples
        rows = [s.get_data_slice(first / self.rate, stop / self.rate) for s in self.signals]
        return np.stack([np.asarray(r, dtype=np.float64) for r in rows])

    def _item(self, epoch: int) -> Item:
        if epoch >= self.epochs:
            self.preprocessor.mark(epoch)
            return Item(
                None,
                position=epoch,
                error=f"{self.path.name}: last epoch is incomplete ({self.leftover} of {self.epoch_samples} samples)",
            )
        try:
            data = self.read(epoch)
        except Exception as exc:  # noqa: BLE001 - a damaged data record is one skipped epoch
            self.preprocessor.mark(epoch)
            return Item(None, position=epoch, error=f"{self.path.name}: epoch {epoch} could not be read ({exc})")
        try:
            x, flag = self.preprocessor.prepare(data, rate=self.rate, labels=self.labels, position=epoch)
        except Unusable as exc:
            return Item(None, position=epoch, error=f"{self.path.name}: epoch {epoch}: {exc}")
        return Item(x, position=epoch, flag=flag)

    def __iter__(self) -> Iterator[Item]:
        began = time.monotonic()
        last = self.epochs + (1 if self.leftover else 0)
        for k in range(self.start, last):
            if self.pace == "realtime":
                due = began + (k - self.start + 1) * self.epoch_seconds
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
            if self._stop.is_set():
                return
            yield self._item(k)

    def close(self) -> None:
        """End the replay (a real-time wait is cut short)."""
        self._stop.set()
