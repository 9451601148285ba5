"""A stream's output files, whose committed length is part of every checkpoint.

:class:`OffsetFile` is an append-only file opened at a known byte offset: on resume it is truncated to
the offset the checkpoint recorded, so records written after the checkpoint (and re-made after the
resume) appear once. :class:`RecordOutput` writes one line per record (JSON Lines or CSV) or to stdout;
:class:`EventOutput` one JSON line per rail event. Both are sinks of the one loop
(:class:`edgetta.streams.loop.StreamRunner`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import OutputError
from edgetta.kernels.softmax import softmax
from edgetta.streams.records import ADAPTATION_FIELDS, RECORD_FIELDS, EventLike, Record

EXTRA_FIELDS = ("predicted_at",)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OffsetFile:
    """Append-only bytes at ``path``, starting at ``offset`` (bytes beyond it are cut off). ``keep_tail``:
    keep the complete lines beyond ``offset`` instead (a live stream's records written after the last
    checkpoint are real predictions); :attr:`kept_lines` counts them."""

    def __init__(self, path: Path, offset: int = 0, *, keep_tail: bool = False) -> None:
        self.path = path
        self.kept_lines = 0
        self.kept_tail = b""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("r+b" if path.exists() else "w+b")
            size = self._file.seek(0, os.SEEK_END)
            if size < offset:
                raise OutputError(
                    f"{path} is shorter ({size} bytes) than its checkpoint says ({offset} bytes): it was changed "
                    "outside edgetta; move it away and resume, or start over with --fresh"
                )
            end = offset
            if keep_tail and size > offset:
                self._file.seek(offset)
                tail = self._file.read()
                end = offset + tail.rfind(b"\n") + 1  # complete lines only
                self.kept_tail = tail[: end - offset]
                self.kept_lines = self.kept_tail.count(b"\n")
            self._file.truncate(end)
            self._file.seek(end)
            self._file.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output path") from exc

    def write(self, data: bytes) -> None:
        self._file.write(data)

    @property
    def offset(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        """Hand the written bytes to the OS (readers see them; a crash of this process keeps them)."""
        self._file.flush()

    def committed(self) -> int:
        """Hand everything written to the OS; returns the length (what a checkpoint may record)."""
        self._file.flush()
        return self._file.tell()

    def fsync(self) -> None:
        """Make what the OS holds durable (safe to call from another thread while writing goes on)."""
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


class RecordOutput:
    """One line per record: ``jsonl`` (Record fields, ``predicted_at``, optional ``probs``), ``csv`` (the
    same columns, probabilities space-separated) or ``stdout`` (JSON lines; not resumable: no offset).
    ``adaptation``: also the :data:`ADAPTATION_FIELDS` (signal-quality flag, excluded, adapted, gated, the
    call's events as ``rail:kind``; space-separated in CSV)."""

    def __init__(
        self,
        fmt: str,
        path: Path | None,
        *,
        offset: int = 0,
        probabilities: bool = False,
        keep_tail: bool = False,
        adaptation: bool = False,
    ) -> None:
        self.format, self.probabilities, self.adaptation = fmt, probabilities, adaptation
        self.file = None if fmt == "stdout" or path is None else OffsetFile(path, offset, keep_tail=keep_tail)
        self.columns = list(RECORD_FIELDS) + list(EXTRA_FIELDS) + (["probs"] if probabilities else [])
        self.columns += list(ADAPTATION_FIELDS) if adaptation else []
        if fmt == "csv" and self.file is not None and self.file.offset == 0:
            self.file.write(self._csv_line(self.columns))

    @property
    def kept_lines(self) -> int:
        return 0 if self.file is None else self.file.kept_lines

    def last_kept_position(self, default: Any) -> Any:
        """The ``position`` of the last record kept beyond the checkpoint (``default`` when none)."""
        if self.file is None or not self.file.kept_lines:
            return default
        line = self.file.kept_tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
        try:
            if self.format == "csv":
                return next(csv.reader([line]))[self.columns.index("position")]
            return json.loads(line).get("position", default)
        except (ValueError, IndexError, StopIteration):
            return default

    def row(self, record: Record) -> dict[str, Any]:
        row = record.to_json()
        row["predicted_at"] = round(time.time(), 6)
        if self.adaptation:
            row.update(record.adaptation_json())
        if self.probabilities:
            probs = None if record.logits is None or record.pred is None else softmax(record.logits)
            row["probs"] = None if probs is None else [round(float(p), 6) for p in probs]
        return row

    @staticmethod
    def _csv_line(values: list[Any]) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(values)
        return text.getvalue().encode()

    def write(self, record: Record) -> None:
        row = self.row(record)
        if self.format == "csv":
            if self.probabilities and row["probs"] is not None:
                row["probs"] = " ".join(str(p) for p in row["probs"])
            if self.adaptation:
                row["events"] = " ".join(row["events"])
                row.update({k: int(row[k]) for k in ("excluded", "adapted", "gated")})
            data = self._csv_line(["" if row.get(c) is None else row[c] for c in self.columns])
        else:
            data = (json.dumps(row, default=_plain) + "\n").encode()
        if self.file is None:
            sys.stdout.write(data.decode())
        else:
            self.file.write(data)

    def write_event(self, event: EventLike) -> None:
        """Records only."""

    def flush(self) -> None:
        if self.file is None:
            sys.stdout.flush()
        else:
            self.file.flush()

    def committed(self) -> int:
        """The length a checkpoint records (0 for stdout, which cannot be cut back)."""
        if self.file is None:
            sys.stdout.flush()
            return 0
        return self.file.committed()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class EventOutput:
    """``events``: one JSON line per rail or runtime event, with the stream name and the wall time."""

    def __init__(self, stream: str, path: Path, *, offset: int = 0, keep_tail: bool = False) -> None:
        self.stream = stream
        self.file = OffsetFile(path, offset, keep_tail=keep_tail)

    def write(self, record: Record) -> None:
        """Events only."""

    def write_event(self, event: EventLike) -> None:
        row = {"stream": self.stream, "time": round(time.time(), 6), **event.to_json()}
        self.file.write((json.dumps(row, default=_plain) + "\n").encode())

    def flush(self) -> None:
        self.file.flush()

    def committed(self) -> int:
        return self.file.committed()

    def close(self) -> None:
        self.file.close()
