"""Where records and events go: JSON lines, CSV, or memory. Every sink has ``write(record)``,
``write_event(event)`` and ``close()``; a sink ignores what it does not store.

Order guarantee of :func:`edgetta.streams.run_stream`: the events of a batch (a reset before it, the
rails' decisions during it) are written before that batch's records.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from edgetta.errors import OutputError
from edgetta.kernels.softmax import softmax
from edgetta.streams.records import RECORD_FIELDS, EventLike, Record


class Sink(Protocol):
    def write(self, record: Record) -> None: ...

    def write_event(self, event: EventLike) -> None: ...

    def close(self) -> None: ...


def _plain(value: Any) -> Any:
    """JSON form of numpy scalars and arrays inside events."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _open(path: str | Path, newline: str | None = None) -> IO[str]:
    path = Path(path)
    try:
        return path.open("w", newline=newline)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output directory") from exc


class JsonlSink:
    """``predictions.jsonl``: one JSON object per record; ``probabilities=True`` adds ``probs``."""

    def __init__(self, path: str | Path, probabilities: bool = False) -> None:
        self.path, self.probabilities = Path(path), probabilities
        self._file = _open(self.path)

    def write(self, record: Record) -> None:
        row = record.to_json()
        if self.probabilities:
            probs = None if record.logits is None or record.pred is None else softmax(record.logits)
            row["probs"] = None if probs is None else [round(float(p), 6) for p in probs]
        self._file.write(json.dumps(row, default=_plain) + "\n")

    def write_event(self, event: EventLike) -> None:
        """Predictions only; events go to an :class:`EventLog`."""

    def close(self) -> None:
        self._file.close()


class EventLog:
    """``events.jsonl``: one JSON object per event (rail decisions, resets)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open(self.path)

    def write(self, record: Record) -> None:
        """Events only; records go to a :class:`JsonlSink` or :class:`CsvSink`."""

    def write_event(self, event: EventLike) -> None:
        self._file.write(json.dumps(event.to_json(), default=_plain) + "\n")

    def close(self) -> None:
        self._file.close()


class CsvSink:
    """One CSV row per record with the columns of :data:`RECORD_FIELDS` (empty cell for None)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open(self.path, newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=RECORD_FIELDS)
        self._writer.writeheader()

    def write(self, record: Record) -> None:
        self._writer.writerow(record.to_json())

    def write_event(self, event: EventLike) -> None:
        """Records only."""

    def close(self) -> None:
        self._file.close()


class Collector:
    """Keeps records and events in memory. ``events`` holds ``(index, event)`` pairs, ``index`` being
    the index of the first record of the batch the event belongs to."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.events: list[tuple[int, EventLike]] = []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def write_event(self, event: EventLike) -> None:
        self.events.append((len(self.records), event))

    def close(self) -> None:
        """Nothing to release; the records stay available."""

    def preds(self) -> np.ndarray:
        """Predicted class per record, -1 where skipped."""
        return np.array([-1 if r.pred is None else r.pred for r in self.records], dtype=np.int64)

    def correct(self) -> np.ndarray:
        """Per record: prediction equals label (False when skipped or unlabelled)."""
        return np.array([bool(r.correct) for r in self.records], dtype=bool)

    def event_indices(self) -> dict[str, list[int]]:
        """Kind -> indices of the first record of each batch that produced an event of that kind."""
        out: dict[str, list[int]] = {}
        for index, event in self.events:
            out.setdefault(event.kind, []).append(index)
        return out
