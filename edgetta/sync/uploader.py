"""The uploader thread: sends queued samples to the sync server in batches, never in the inference path.

It takes the oldest rows of the :class:`~edgetta.sync.queue.UploadQueue` (one input shape per batch, at most
``batch_rows`` rows and ``batch_bytes`` bytes), sends them gzip-compressed and deletes them once the server
answered 200. Failures: no answer or 5xx -> exponential backoff with jitter (:class:`edgetta.streams.backoff.Backoff`)
and the same batch again; 429 -> the server's Retry-After (bounded by the backoff's maximum); 401/403 -> the
token is wrong: logged, retried at the backoff's maximum pace (a fixed token file may be picked up after a
restart); 413 -> the batch is halved (a single row too large is dropped, counted); 422 -> the server refuses the
data itself (wrong shape for its model): the batch is dropped, counted, logged with the server's message.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from edgetta.streams.backoff import Backoff
from edgetta.sync._edge_client import SyncClient, encode_samples
from edgetta.sync._worker import BackgroundWorker
from edgetta.sync.queue import UploadQueue

# report(kind, message, fields): how the uploader tells the daemon what happened (log line + metrics)
Report = Callable[[str, str, dict[str, Any]], None]


def _quiet(kind: str, message: str, fields: dict[str, Any]) -> None:
    """Default reporter: nothing."""


class Uploader(BackgroundWorker):
    """Background sender of one queue. ``idle``: seconds between looks at an empty queue."""

    def __init__(
        self,
        queue: UploadQueue,
        client: SyncClient,
        *,
        device_id: str,
        base_sha256: str,
        batch_rows: int = 64,
        batch_bytes: int = 4 * 2**20,
        idle: float = 1.0,
        backoff: Backoff | None = None,
        report: Report = _quiet,
    ) -> None:
        self.queue, self.client = queue, client
        self.device_id, self.base_sha256 = device_id, base_sha256
        self.batch_rows, self.batch_bytes, self.idle = int(batch_rows), int(batch_bytes), float(idle)
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self.report = report
        self.counters: Counter[str] = Counter()
        self.failures = 0
        self.last_error = ""
        self.bytes_up = 0
        super().__init__("edgetta-sync-upload")

    def notify(self) -> None:
        """New rows were queued: look now rather than after ``idle`` seconds."""
        self.wake.set()

    # -- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        rows = self.batch_rows
        while not self.stop_event.is_set():
            try:
                batch = self.queue.peek(rows, self.batch_bytes)
            except Exception as exc:  # a closed or broken database: report, wait, try again
                self._fail(f"queue: {exc}")
                continue
            if not batch:
                self.wake.wait(self.idle)
                self.wake.clear()
                continue
            shape = batch[0].x.shape
            batch = [s for s in batch[: next((i for i, s in enumerate(batch) if s.x.shape != shape), len(batch))]]
            outcome = self.send(batch)
            if outcome == "too_large":
                if len(batch) == 1:
                    self.queue.ack([batch[0].id], counter="refused")
                    self.counters["dropped_too_large"] += 1
                    self.report("upload_dropped", "a single sample is larger than the server accepts", {"rows": 1})
                else:
                    rows = max(1, len(batch) // 2)
                continue
            if outcome == "sent":
                rows = self.batch_rows

    def send(self, batch: list[Any]) -> str:
        """One attempt at one batch: "sent", "dropped", "too_large" or "retry" (after waiting)."""
        last = self.queue.get_meta("batch_seq")
        # a new queue starts from the clock (ms), so a device whose state was wiped never repeats a batch_seq
        # the server remembers (it acknowledges a repeated batch_seq without learning from it)
        seq = int(time.time() * 1000) if last is None else int(last) + 1
        x = np.stack([s.x for s in batch])
        ent = np.array([np.nan if s.entropy is None else s.entropy for s in batch], np.float32)
        body = encode_samples(x, ent, device_id=self.device_id, base_sha256=self.base_sha256, batch_seq=seq)
        started = time.monotonic()
        reply = self.client.upload(body)
        if reply.status == 200:
            self.queue.ack([s.id for s in batch], meta={"batch_seq": seq})  # one transaction
            self.counters["uploaded"] += len(batch)
            self.counters["batches"] += 1
            self.bytes_up += len(body)
            if self.failures:
                self.report(
                    "upload_recovered",
                    f"uploads work again after {self.failures} failed attempt(s)",
                    {"rows": len(batch)},
                )
            self.failures = 0
            self.report(
                "uploaded",
                f"uploaded {len(batch)} samples",
                {"rows": len(batch), "bytes": len(body), "seconds": round(time.monotonic() - started, 4), "seq": seq},
            )
            return "sent"
        if reply.status == 413:
            return "too_large"
        if reply.status == 422:
            self.queue.ack([s.id for s in batch], counter="refused")
            self.counters["dropped_invalid"] += len(batch)
            self.report("upload_refused", f"server refused the samples: {reply.message()}", {"rows": len(batch)})
            return "dropped"
        wait = None
        if reply.status == 429 and reply.retry_after is not None:
            wait = min(reply.retry_after, self.backoff.maximum)
        if reply.status in (401, 403):
            wait = self.backoff.maximum
            self.counters["unauthorized"] += 1
        self._fail(reply.message(), wait, status=reply.status)
        return "retry"

    def _fail(self, message: str, wait: float | None = None, *, status: int = 0) -> None:
        self.counters["failures"] += 1
        first = self.failures == 0
        self.failures += 1
        self.last_error = message
        delay = self.backoff.delay(self.failures - 1) if wait is None else wait
        if first or self.failures % 10 == 0:
            self.report(
                "upload_failed",
                f"upload failed ({message}); retrying in {delay:.1f} s",
                {"status": status, "failures": self.failures, "queued": len(self.queue)},
            )
        self.stop_event.wait(delay)
