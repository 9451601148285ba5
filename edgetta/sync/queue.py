"""The upload queue: selected samples wait on disk (SQLite in WAL mode) until the cloud accepted them.

Bounded by rows and by bytes of sample data. When a new batch does not fit, the policy decides:
``drop_oldest`` (the default: on a shifting stream the newest samples matter most) deletes the oldest rows
until it fits, ``drop_newest`` refuses the new rows; either way the loss is counted (``dropped_full``).
A batch is written in one transaction, so a crash (``kill -9``) leaves it whole or absent; rows leave the
queue only when the server acknowledged them (:meth:`UploadQueue.ack`), so a crash mid-upload sends them
again (the server may see a batch twice, never lose one). ``synchronous=NORMAL`` with WAL survives a killed
process; a power cut may lose the last transactions, never the database. Small JSON values (counters, the
selector's running state) live in the ``meta`` table and may be written in the same transaction as rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import ConfigError

POLICIES = ("drop_oldest", "drop_newest")
SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    shape TEXT NOT NULL,
    entropy REAL,
    nbytes INTEGER NOT NULL,
    x BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class QueuedSample:
    """One waiting sample: float32 model input ``x`` and its entropy (None when unknown)."""

    id: int
    x: np.ndarray
    entropy: float | None
    created: float


class UploadQueue:
    """A bounded, crash-safe FIFO of samples shared by the inference thread (``put``) and the uploader."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 10_000,
        max_bytes: int = 64 * 2**20,
        policy: str = "drop_oldest",
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"upload queue policy {policy!r} is not one of {', '.join(POLICIES)}")
        if max_rows < 1 or max_bytes < 1:
            raise ConfigError("upload queue limits must be >= 1 (max_rows, max_bytes)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows, self.max_bytes, self.policy = int(max_rows), int(max_bytes), policy
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            rows, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM samples").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"upload queue {self.path} cannot be opened ({exc}); move it away to start an empty queue"
            ) from None
        self._rows, self._bytes = int(rows), int(nbytes)

    # -- writing ---------------------------------------------------------------------------------------
    def put(
        self,
        xs: Sequence[np.ndarray],
        entropies: Sequence[float | None] | None = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Append samples (and set ``meta`` values) in one transaction; returns how many rows the full-queue
        policy dropped (old rows deleted, or new rows refused)."""
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in xs]
        ents = list(entropies) if entropies is not None else [None] * len(arrays)
        if len(ents) != len(arrays):
            raise ValueError(f"put: {len(arrays)} samples but {len(ents)} entropies")
        sizes = [a.nbytes for a in arrays]
        with self._lock:
            dropped = 0
            keep = len(arrays)
            if self.policy == "drop_newest":
                room_rows = self.max_rows - self._rows
                room_bytes = self.max_bytes - self._bytes
                keep = 0
                while keep < len(arrays) and keep < room_rows and sizes[keep] <= room_bytes:
                    room_bytes -= sizes[keep]
                    keep += 1
                dropped = len(arrays) - keep
            else:  # drop_oldest: the newest rows that fit at all are kept
                total = 0
                start = len(arrays)
                while start > 0 and len(arrays) - start < self.max_rows and total + sizes[start - 1] <= self.max_bytes:
                    start -= 1
                    total += sizes[start]
                dropped = start  # new rows that can never fit
                arrays, ents, sizes = arrays[start:], ents[start:], sizes[start:]
                keep = len(arrays)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self.policy == "drop_oldest" and keep:
                    dropped += self._evict(keep, sum(sizes))
                now = time.time()
                self._db.executemany(
                    "INSERT INTO samples (created, shape, entropy, nbytes, x) VALUES (?, ?, ?, ?, ?)",
                    [
                        (now, json.dumps(list(a.shape)), None if e is None else float(e), a.nbytes, a.tobytes())
                        for a, e in zip(arrays[:keep], ents[:keep])
                    ],
                )
                values = dict(meta or {})
                counters = self._meta_locked("counters", {})
                counters["enqueued"] = int(counters.get("enqueued", 0)) + keep
                counters["dropped_full"] = int(counters.get("dropped_full", 0)) + dropped
                values["counters"] = counters
                self._set_meta_locked(values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise
            self._rows += keep
            self._bytes += sum(sizes[:keep])
            return dropped

    def _evict(self, rows: int, nbytes: int) -> int:
        """Delete the oldest rows until ``rows`` more rows of ``nbytes`` fit (inside a transaction)."""
        excess_rows = self._rows + rows - self.max_rows
        excess_bytes = self._bytes + nbytes - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0
        n = freed = 0
        ids = []
        for row_id, size in self._db.execute("SELECT id, nbytes FROM samples ORDER BY id"):
            if n >= excess_rows and freed >= excess_bytes:
                break
            ids.append(row_id)
            n += 1
            freed += size
        self._db.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])
        self._rows -= n
        self._bytes -= freed
        return n

    def _recount(self) -> None:
        rows, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM samples").fetchone()
        self._rows, self._bytes = int(rows), int(nbytes)

    # -- reading ---------------------------------------------------------------------------------------
    def peek(self, max_rows: int, max_bytes: int | None = None) -> list[QueuedSample]:
        """The oldest samples (at most ``max_rows`` and, beyond the first, ``max_bytes``), left in the queue."""
        out: list[QueuedSample] = []
        total = 0
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, created, shape, entropy, x FROM samples ORDER BY id LIMIT ?", (int(max_rows),)
            )
            for row_id, created, shape, entropy, blob in cursor:
                if out and max_bytes is not None and total + len(blob) > max_bytes:
                    break
                x = np.frombuffer(blob, dtype=np.float32).reshape(json.loads(shape))
                out.append(QueuedSample(int(row_id), x, entropy, float(created)))
                total += len(blob)
        return out

    def ack(self, ids: Sequence[int], *, meta: dict[str, Any] | None = None, counter: str = "uploaded") -> None:
        """The server took these rows (``counter``: uploaded, or why they were given up): delete them and set
        ``meta`` in the same transaction (rows dropped meanwhile are ignored)."""
        if not ids and not meta:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM samples WHERE id = ?", [(int(i),) for i in ids])
                counters = self._meta_locked("counters", {})
                counters[counter] = int(counters.get(counter, 0)) + len(ids)
                self._set_meta_locked({**(meta or {}), "counters": counters})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._recount()

    def __len__(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        return self._bytes

    def counters(self) -> dict[str, int]:
        """enqueued, uploaded, dropped_full, refused: totals over the queue's whole life (they survive restarts)."""
        with self._lock:
            c = self._meta_locked("counters", {})
        return {k: int(c.get(k, 0)) for k in ("enqueued", "uploaded", "dropped_full", "refused")}

    # -- meta ------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._meta_locked(key, default)

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._set_meta_locked(values)

    def _meta_locked(self, key: str, default: Any) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def _set_meta_locked(self, values: dict[str, Any]) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
