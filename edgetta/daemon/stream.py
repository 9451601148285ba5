"""One stream inside the daemon: its reader, the one loop (:class:`StreamRunner`), outputs and checkpoints.

The supervisor calls :meth:`StreamWorker.step` from its single processing thread; the worker takes what
its reader queued, feeds the loop, writes records, updates metrics and commits a checkpoint at the
configured cadence. Items a signal source flagged (``preprocess.quality``) reach the Adapter with their
flag (``Adapter.process(x, flags=...)``, in the loop), so its ``signal_quality`` rail keeps them out of
adaptation; their records say so. Live sources flush a partial batch after ``flush_after`` seconds so predictions are
not held back; recorded sources only ever form full batches (and the last one at the end), so a resumed
stream batches exactly like an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from typing import Any

from edgetta.daemon.checkpoint import AdapterState, CheckpointStore, Committer, StreamCheckpoint
from edgetta.daemon.config import CheckpointConfig, StreamConfig
from edgetta.daemon.health import COLLAPSE_RESETTERS, StreamStatus
from edgetta.daemon.logs import log_event
from edgetta.daemon.metrics import NullMetrics
from edgetta.daemon.outputs import EventOutput, RecordOutput
from edgetta.daemon.reader import END, Failure, ItemQueue, Reader
from edgetta.daemon.sources import SourceOpener, open_stream_source
from edgetta.errors import CheckpointError, ConfigError
from edgetta.streams.loop import StreamRunner
from edgetta.streams.records import EventLike, Record

MAX_SKIP_REASONS = 64  # distinct skip reasons a stream counts apart (they go into its checkpoint)
DEFAULT_FLUSH_AFTER = 0.5  # seconds a live stream's partial batch may wait
QUIET_EVENTS = frozenset({"gate", "skip", "restore", "bound", "window"})  # logged at debug level


class _EventTap:
    """A loop sink that turns events into metrics, health and log lines."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    def write(self, record: Record) -> None:
        """Records are counted by the worker."""

    def write_event(self, event: EventLike) -> None:
        w = self.worker
        data = event.to_json()
        rail, kind = str(data.get("rail", "")), event.kind
        w.metrics.rail_event(w.name, rail, kind)
        if kind == "reset":
            w.metrics.reset(w.name, rail)
            if rail in COLLAPSE_RESETTERS:
                w.status.collapse_reset()
        level = logging.DEBUG if kind in QUIET_EVENTS else logging.INFO
        log_event(w.log, level, f"{rail} {kind}: {data.get('reason', '')}", stream=w.name, event=data)

    def close(self) -> None:
        """Nothing to release."""


class StreamWorker:
    """Everything of one stream but the shared engine."""

    def __init__(
        self,
        config: StreamConfig,
        adapter: Any,
        *,
        state_dir: Any,
        checkpoint: CheckpointConfig,
        metrics: NullMetrics,
        log: logging.Logger,
        wake: threading.Event,
        max_items: int | None = None,
        open_source: SourceOpener = open_stream_source,
    ) -> None:
        self.config, self.name, self.adapter = config, config.name, adapter
        self.open_source = open_source
        self.cadence = checkpoint
        self.metrics, self.log = metrics, log
        self.store = CheckpointStore(state_dir / "streams" / config.name)
        self.committer = Committer(self.store, lambda seconds: metrics.latency(config.name, "checkpoint", seconds))
        self.status = StreamStatus(config.name)
        self.queue = ItemQueue(config.queue.size, wake)
        self.max_items = max_items
        self.counters: Counter[str] = Counter()
        self.read_times: deque[float] = deque()
        self.last_position: Any = None
        self.seq = 0
        self.live = False
        self.items_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.first_pending: float | None = None
        self.last_skip: str | None = None
        self.resumed_from: StreamCheckpoint | None = None
        self.output: RecordOutput | None = None
        self.events: EventOutput | None = None
        self.runner: StreamRunner | None = None
        self.reader: Reader | None = None
        self.source: Any = None
        self.sync: Any = None  # edgetta.sync._edge_sync.EdgeSync when this stream syncs with the cloud
        self.fed: deque[Any] = deque()  # items fed to the runner whose records are not written yet (sync only)

    @property
    def quality(self) -> bool:
        """Whether the source flags signal quality (``preprocess.quality``): the records then carry the flag and
        what the adaptation did with each item (``flagged``, ``excluded``, ``adapted``, ``gated``, ``events``)."""
        value = (self.config.preprocess or {}).get("quality")
        return value is not None and value is not False

    # -- start -------------------------------------------------------------------------------------------
    def prepare(self, resume: bool) -> None:
        """Restore from this stream's checkpoint (``resume``) or start over; open the outputs."""
        out = self.config.output
        ck: StreamCheckpoint | None = None
        if resume and self.store.exists():
            ck = self.store.load()
            self._check_settings(ck)
            self.adapter.restore(self.store.adapter_path(ck))
        else:
            self.store.clear()
        keep = bool(ck and ck.live)
        self.output = RecordOutput(
            out.format,
            out.path,
            offset=ck.output_offset if ck else 0,
            probabilities=out.probabilities,
            keep_tail=keep,
            adaptation=self.quality,
        )
        if out.events is not None:
            self.events = EventOutput(self.name, out.events, offset=ck.events_offset if ck else 0, keep_tail=keep)
        sinks: list[Any] = [self.output] + ([self.events] if self.events else []) + [_EventTap(self)]
        self.runner = StreamRunner(
            self.adapter,
            sinks,
            batch_size=self.config.adapt.batch_size,
            episodic=self.config.adapt.episodic,
            max_skip_reasons=MAX_SKIP_REASONS,
        )
        if ck is None:
            return  # its first checkpoint is committed by start(), once every source opened
        self.resumed_from = ck
        self.seq, self.live, self.last_position = ck.seq, ck.live, ck.position
        self.counters = Counter({k: int(v) for k, v in ck.counters.items()})
        self.runner.load_state(ck.runner)
        fields: dict[str, Any] = {"stream": self.name, "index": self.runner.index, "position": ck.position}
        if ck.live:
            self.runner.index += self.output.kept_lines  # records written after the checkpoint stay
            self.last_position = self.output.last_kept_position(ck.position)
            if not ck.clean:
                lost = f"at most {self.config.queue.size + self.config.adapt.batch_size}"
                fields.update(kept_records=self.output.kept_lines, lost_in_flight=lost)
        message = "resumed after an orderly stop" if ck.clean else "resumed after a crash"
        log_event(self.log, logging.INFO, f"{self.name}: {message}", **fields)

    def _check_settings(self, ck: StreamCheckpoint) -> None:
        now = self.config.settings()
        changed = sorted(k for k in set(now) | set(ck.settings) if now.get(k) != ck.settings.get(k))
        if changed:
            keys = ", ".join(f"{self.config.where}.{k}" for k in changed)
            raise CheckpointError(
                f"stream {self.name}: the checkpoint in {self.store.folder} was made with other settings ({keys}); "
                "resume with the settings it was made with, or start over with --fresh"
            )

    def open(self) -> None:
        """Open the source (in the calling thread, at daemon start), right after the last committed item.

        A setting the source refuses (ConfigError), a missing library or a preprocessing state that does not
        fit stops the daemon's start; a source that cannot be read (a missing or corrupt file) fails this
        stream only."""
        try:
            self.source = self.open_source(
                self.config.source,
                self.config.preprocess,
                stream=str(self.config.index),
                artifact=self.adapter.artifact,
                after=self.last_position,
                on_event=self._source_event,
            )
        except (ConfigError, CheckpointError, ImportError):
            raise
        except Exception as exc:  # DataError, OSError, a decoder's own error: this stream cannot run
            self.fail(f"cannot open the source: {exc}")
            return
        live = bool(getattr(self.source, "live", False))
        policy = self.config.queue.policy
        if policy == "drop_oldest" and not live:
            raise ConfigError(
                f"{self.config.where}.queue.policy: drop_oldest would lose items of a recorded source; "
                "use block or auto"
            )
        self.live = live
        self.queue.drop_oldest = policy == "drop_oldest" or (policy == "auto" and live)
        self.status.live = live
        ck = self.resumed_from
        preprocessor = getattr(self.source, "preprocessor", None)
        history = getattr(preprocessor, "history", None)
        ahead = self.config.queue.size + self.config.adapt.batch_size + 1  # items read but not yet written
        if getattr(preprocessor, "stateful", False) and history is not None and history < ahead:
            raise ConfigError(
                f"{self.config.where}.queue.size: the source keeps its preprocessing state for the last {history} "
                f"items, fewer than queue.size + batch_size + 1 = {ahead}; lower queue.size"
            )
        if ck is not None and ck.preprocess is not None and preprocessor is not None:
            preprocessor.load_state(ck.preprocess)
        log_event(
            self.log,
            logging.INFO,
            f"{self.name}: source open",
            stream=self.name,
            kind=self.config.source.get("kind"),
            live=live,
            queue="drop_oldest" if self.queue.drop_oldest else "block",
            after=self.last_position,
        )

    def start(self) -> None:
        """Start the reader thread (after :meth:`open`); a fresh stream first commits its empty checkpoint."""
        self.metrics.queue_depth(self.name, lambda: float(len(self.queue)))
        self.metrics.updates(self.name, 0)
        if self.source is None:
            return
        if self.resumed_from is None:
            self.checkpoint(wait=True)  # a fresh stream has a checkpoint before its first item
        self.reader = Reader(
            self.name,
            self.source,
            self.queue,
            num_classes=int(self.adapter.artifact.num_classes),
            on_drop=self._dropped,
            max_items=self.max_items,
        )
        self.status.set("running")
        self.metrics.state(self.name, "running")
        self.reader.start()

    def _source_event(self, kind: str, message: str) -> None:
        """A live source's connects, disconnects and give-ups: logged and counted."""
        self.metrics.source_event(self.name, kind)
        level = logging.INFO if kind == "connected" else logging.WARNING
        log_event(self.log, level, f"{self.name}: source {kind}: {message}", stream=self.name, source_event=kind)

    def _dropped(self, n: int) -> None:
        self.counters["dropped"] += n
        self.metrics.dropped(self.name, "queue_full", n)
        if self.counters["dropped"] == n or self.counters["dropped"] % 100 < n:
            log_event(
                self.log,
                logging.WARNING,
                f"{self.name}: queue full, dropped the oldest item(s)",
                stream=self.name,
                dropped_total=self.counters["dropped"],
            )

    # -- the work ----------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.status.state in ("starting", "running")

    def step(self, now: float) -> bool:
        """Feed what the reader queued (up to a batch); True when anything was done."""
        if not self.active:
            return False
        assert self.runner is not None
        entries = self.queue.take(max(1, self.runner.batch_size - len(self.runner.pending)))
        records: list[Record] = []
        did = bool(entries)
        t0 = time.perf_counter()
        for entry in entries:
            if entry == END or isinstance(entry, Failure):
                records.extend(self.runner.flush())
                self._written(records, t0)
                self._end(entry)
                return True
            item, read_at = entry
            self.read_times.append(read_at)
            self.metrics.latency(self.name, "queue", now - read_at)
            if self.sync is not None:
                self.fed.append(item)
            records.extend(self.runner.feed((item,)))
            self.status.items += 1
        if self.runner.pending and self.first_pending is None:
            self.first_pending = now
        if self.live and self.runner.pending and now - (self.first_pending or now) >= self.flush_after:
            records.extend(self.runner.flush())
            did = True
        self._written(records, t0)
        if self.sync is not None:
            did = self._sync_point() or did
        if did:
            self.status.progress()
        return did

    def _sync_point(self) -> bool:
        """Between two batches: the sync's events, and a verified bundle applied (then a checkpoint)."""
        assert self.runner is not None
        emitted = []

        def emit(event: Any) -> None:
            emitted.append(event)
            self.runner.emit_event(event)

        applied = self.sync.safe_point(emit)
        if emitted and self.events is not None:
            self.events.flush()
        if applied:
            self.checkpoint(wait=True)  # the applied bundle version is committed with the state made on it
        return applied

    @property
    def flush_after(self) -> float:
        return self.config.flush_after if self.config.flush_after is not None else DEFAULT_FLUSH_AFTER

    def _written(self, records: list[Record], t0: float) -> None:
        if not records:
            return
        done = time.monotonic()
        self.metrics.latency(self.name, "model", time.perf_counter() - t0)
        updates_before = self.counters["updates"]
        self.counters["updates"] = int(self.adapter.totals.get("updates", 0))
        self.metrics.updates(self.name, max(0, self.counters["updates"] - updates_before))
        entropies = []
        for rec in records:
            self.last_skip = rec.skip
            outcome = "skipped" if rec.skip is not None else "processed"
            self.counters[outcome] += 1
            self.metrics.items(self.name, outcome)
            if rec.entropy is not None and math.isfinite(rec.entropy):
                entropies.append(rec.entropy)
            if self.read_times:
                self.metrics.latency(self.name, "item", done - self.read_times.popleft())
        if entropies:
            self.metrics.entropy(self.name, sum(entropies) / len(entropies))
        self.last_position = records[-1].position
        self.items_since_checkpoint += len(records)
        if self.sync is not None:
            items = [self.fed.popleft() for _ in range(min(len(records), len(self.fed)))]
            self.sync.observe(items, records)
        for out in (self.output, self.events):
            if out is not None:
                out.flush()
        if self.runner is not None and not self.runner.pending:
            self.first_pending = None

    def _end(self, entry: Any) -> None:
        if isinstance(entry, Failure):
            self.checkpoint(wait=True)
            self.status.set("failed", entry.reason)
            self.metrics.state(self.name, "failed")
            log_event(self.log, logging.ERROR, f"{self.name}: stream failed: {entry.reason}", stream=self.name)
        elif self.live:  # a camera or an inlet only ends when its source gave up reconnecting
            self.checkpoint(wait=True)
            reason = "the live source ended" + (f" ({self.last_skip})" if self.last_skip else "")
            self.status.set("failed", reason)
            self.metrics.state(self.name, "failed")
            log_event(self.log, logging.ERROR, f"{self.name}: stream failed: {reason}", stream=self.name)
        else:
            self.checkpoint(clean=True)
            self.status.set("finished")
            self.metrics.state(self.name, "finished")
            log_event(self.log, logging.INFO, f"{self.name}: end of stream", stream=self.name, **self.totals())

    def fail(self, reason: str) -> None:
        """An unexpected error in this stream's processing: it stops, the others go on (no checkpoint: the
        last committed one is consistent, this state may not be)."""
        self.status.set("failed", reason)
        self.metrics.state(self.name, "failed")
        log_event(self.log, logging.ERROR, f"{self.name}: stream failed: {reason}", stream=self.name)
        if self.reader is not None:
            self.reader.stop()

    # -- checkpoints -------------------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        if self.items_since_checkpoint >= self.cadence.every_items:
            return True
        return self.items_since_checkpoint > 0 and now - self.last_checkpoint >= self.cadence.every_seconds

    def checkpoint(self, clean: bool = False, wait: bool = False) -> bool:
        """Commit adapter state, last position, output offsets and counters together. The disk work runs in the
        background; with a commit still in flight a periodic checkpoint is postponed (False). ``clean`` (an
        orderly end) and ``wait`` return once it is on disk."""
        assert self.runner is not None and self.output is not None
        if self.committer.busy and not (clean or wait):
            return False
        self.committer.check()
        self.counters["checkpoints"] += 1  # counted in the checkpoint it is
        preprocess = None
        preprocessor = getattr(self.source, "preprocessor", None)
        if preprocessor is not None and getattr(preprocessor, "stateful", False) and self.last_position is not None:
            preprocess = preprocessor.state(after=self.last_position)
        ck = StreamCheckpoint(
            stream=self.name,
            preprocess=preprocess,
            seq=self.seq + 1,
            adapter_file="",
            position=self.last_position,
            output_offset=self.output.committed(),
            events_offset=self.events.committed() if self.events else 0,
            runner=self.runner.state(),
            counters=dict(self.counters),
            settings=self.config.settings(),
            live=self.live,
            clean=clean,
            sync=None if self.sync is None else {"bundle_version": self.sync.version},
        )
        files = [out.file for out in (self.output, self.events) if out is not None and out.file is not None]
        self.committer.submit(ck, AdapterState.of(self.adapter), files)
        self.seq = ck.seq
        self.items_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.metrics.checkpoint(self.name)
        if clean or wait:
            self.committer.wait()
        return True

    # -- stop --------------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop reading. A live stream processes what it queued and its partial batch; a recorded one keeps
        only whole batches (the items after its last record are read again on resume). Then a checkpoint."""
        if self.reader is not None:
            self.reader.stop()
        if not self.active or self.runner is None:
            return
        if self.live:
            t0 = time.perf_counter()
            records: list[Record] = []
            for entry in self.queue.take(len(self.queue) + 1):
                if entry == END or isinstance(entry, Failure):
                    break
                item, read_at = entry
                self.read_times.append(read_at)
                if self.sync is not None:
                    self.fed.append(item)
                records.extend(self.runner.feed((item,)))
            records.extend(self.runner.flush())
            self._written(records, t0)
        self.runner.pending = []
        self.fed.clear()
        self.checkpoint(clean=True)
        self.status.set("stopped")
        self.metrics.state(self.name, "stopped")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
            self.reader.thread.join(timeout=2.0)
        try:
            self.committer.close()  # a commit in flight finishes before its files close
        except Exception as exc:
            log_event(self.log, logging.ERROR, f"{self.name}: last checkpoint failed: {exc}", stream=self.name)
        for out in (self.output, self.events):
            if out is not None:
                out.close()

    def totals(self) -> dict[str, int]:
        read = self.reader.read if self.reader else 0
        bad = self.reader.bad_labels if self.reader else 0
        out = {k: int(self.counters.get(k, 0)) for k in ("processed", "skipped", "dropped", "updates", "checkpoints")}
        out["resets"] = int(self.adapter.state.reset_count)
        out["read_this_run"] = read
        if bad:
            out["labels_removed"] = bad
        return out
