"""The device side of cloud-edge sync inside ``edgetta run``: selection -> queue -> uploader, poller -> apply.

One :class:`EdgeSync` serves the stream named by ``sync.stream``. The inference thread calls
:meth:`EdgeSync.observe` after each batch (selection and one SQLite transaction, no network) and
:meth:`EdgeSync.safe_point` between batches, where a verified bundle is health-checked on the recent inputs,
committed to the A/B slots and applied: the bundle's tensors become the adapter's new *source* parameters and
the adapter resets to them, so forward-only adaptation (BN statistics, or any method) continues on top of the
better source; a rail that resets later resets to the bundle, not to the factory parameters. Network work runs
in the uploader and poller threads only. Decisions become events of the stream (rail ``sync``), log lines and
metrics.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.daemon.logs import log_event
from edgetta.safety.base import Event
from edgetta.sync._edge_client import SyncClient
from edgetta.sync.config import SyncConfig
from edgetta.sync.poller import Poller, rejection_code
from edgetta.sync.queue import UploadQueue
from edgetta.sync.selection import REASONS, CemaSelector
from edgetta.sync.uploader import Uploader

RAIL = "sync"
SELECTOR_KEY = "selector"


class EdgeSync:
    """Selective upload and bundle application for one stream's adapter."""

    def __init__(
        self,
        config: SyncConfig,
        state_dir: Path,
        adapter: Any,
        *,
        metrics: Any,
        log: logging.Logger,
        slots: Any = None,
        verify: Any = None,
    ) -> None:
        self.config, self.adapter, self.metrics, self.log = config, adapter, metrics, log
        self.stream = str(config.stream)
        self.folder = state_dir / "sync"
        self.folder.mkdir(parents=True, exist_ok=True)
        q = config.queue
        self.queue = UploadQueue(
            self.folder / "queue.sqlite", max_rows=q.max_rows, max_bytes=q.max_bytes, policy=q.policy
        )
        num_classes = int(adapter.artifact.num_classes)
        self.selector = CemaSelector(num_classes, config.upload.selection)
        saved = self.queue.get_meta(SELECTOR_KEY)
        if isinstance(saved, dict):
            self.selector.load_state(saved)
        self.rng = random.Random(config.upload.seed + self.selector.seen)
        self.recent: deque[np.ndarray] = deque(maxlen=max(1, config.apply.health_window))
        self.slots = slots
        self.verify_fn = verify
        self.version: int | None = None
        self._deferred: Any = None  # a verified bundle waiting for enough recent inputs to be checked on
        a = config.apply
        from edgetta.sync.slots import HealthPolicy

        self.policy = HealthPolicy(
            min_rows=a.min_rows,
            max_entropy_ratio=a.max_entropy_ratio,
            entropy_slack=a.entropy_slack,
            max_class_fraction=a.max_class_fraction,
        )
        self._events: list[Event] = []
        self._events_lock = threading.Lock()
        self.client: SyncClient | None = None
        self.uploader: Uploader | None = None
        self.poller: Poller | None = None
        self.base_sha256 = _base_sha256(adapter.artifact)

    # -- start / stop ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the HTTP client and start the uploader and poller threads."""
        c = self.config
        verify: bool | str = str(c.ca_file) if c.ca_file is not None else True
        self.client = SyncClient(
            c.server, c.read_token(), timeout=c.timeout, verify=verify, max_bundle_bytes=c.max_bundle_bytes
        )
        self.metrics.sync_queue(lambda: float(len(self.queue)), lambda: float(self.queue.nbytes))
        self.metrics.sync_bundle_version(self.version)
        if c.upload.policy != "none":
            self.uploader = Uploader(
                self.queue,
                self.client,
                device_id=c.device_id,
                base_sha256=self.base_sha256,
                batch_rows=c.upload.batch_rows,
                batch_bytes=c.upload.batch_bytes,
                idle=c.upload.idle_seconds,
                backoff=c.upload.backoff,
                report=self._report,
            )
            self.uploader.start()
        if self.verify_fn is not None:
            self.poller = Poller(
                self.client,
                self.verify_fn,
                lambda: self.slots.applied_version if self.slots is not None else self.version,
                interval=c.poll.interval,
                jitter=c.poll.jitter,
                report=self._report,
            )
            self.poller.start()
        log_event(
            self.log,
            logging.INFO,
            f"sync: talking to {c.server} as {c.device_id}",
            stream=self.stream,
            upload=c.upload.policy,
            queued=len(self.queue),
            bundle_version=self.version,
        )

    def stop(self) -> None:
        for worker in (self.uploader, self.poller):
            if worker is not None:
                worker.stop()
        if self.client is not None:
            self.client.close()
        self.queue.close()

    def resume(self) -> None:
        """At start, after the stream restored its checkpoint: the A/B slots are the authority on the source
        parameters. A crash mid-apply leaves the previous or the new slot committed, never a mix
        (:meth:`edgetta.sync.slots.SlotStore.recover`); when the checkpoint was made on another bundle (the crash
        fell between the slot commit and the next checkpoint), the active slot's tensors become the source and
        adaptation restarts from them (:func:`edgetta.sync.slots.resume`)."""
        from edgetta.sync.slots import resume

        before = self.adapter.source_version
        self.version = resume(self.slots, self.adapter)
        note = self.slots.recovery.note
        if before != self.version:
            message = f"sync: checkpoint was made on bundle {before}, {note}: adaptation restarts from it"
            log_event(self.log, logging.WARNING, message, stream=self.stream, checkpoint_version=before)
        else:
            log_event(self.log, logging.INFO, f"sync: {note}", stream=self.stream, bundle_version=self.version)

    # -- inference thread ------------------------------------------------------------------------------
    def observe(self, items: Sequence[Any], records: Sequence[Any]) -> None:
        """After a batch: choose what to upload among the processed items and queue it (one transaction)."""
        rows = [(it, rec) for it, rec in zip(items, records) if rec.skip is None and rec.logits is not None]
        if not rows:
            return
        prepared = self.adapter.inputs.prepare(np.stack([np.asarray(it.x) for it, _ in rows]))
        if len(prepared.index) != len(rows):
            return  # mixed inputs: the adapter accepted them one group at a time; skip this batch for upload
        xs = prepared.rows
        for x in xs:
            self.recent.append(x)
        policy = self.config.upload.policy
        if policy == "none":
            return
        entropies = np.array([rec.entropy for _, rec in rows], dtype=np.float64)
        self.metrics.sync_samples("seen", len(rows))
        if policy == "cema":
            decision = self.selector.select(np.stack([rec.logits for _, rec in rows]))
            keep = decision.keep
            for reason, n in decision.counts.items():
                if n:
                    self.metrics.sync_excluded(reason, n)
        else:
            fraction = 1.0 if policy == "all" else self.config.upload.fraction
            keep = np.array([self.rng.random() < fraction for _ in rows], dtype=bool)
            self.selector.seen += len(rows)
            self.selector.selected += int(keep.sum())
        chosen = np.flatnonzero(keep)
        self.metrics.sync_samples("selected", len(chosen))
        dropped = self.queue.put(
            [xs[i] for i in chosen], [float(entropies[i]) for i in chosen], meta={SELECTOR_KEY: self.selector.state()}
        )
        if dropped:
            self.metrics.sync_samples("dropped_queue_full", dropped)
        if len(chosen) and self.uploader is not None:
            self.uploader.notify()

    def safe_point(self, emit: Any) -> bool:
        """Between two batches: emit pending sync events through ``emit`` and apply a verified bundle, if one
        waits. True when parameters changed (the caller then commits a checkpoint)."""
        with self._events_lock:
            events, self._events = self._events, []
        for event in events:
            emit(event)
        if self.poller is None:
            return False
        bundle, self._deferred = self._deferred, None
        if bundle is not None and len(self.recent) < self.policy.min_rows:
            self._deferred = bundle  # still too few recent inputs to judge it on
            return False
        if bundle is None:
            bundle = self.poller.take()
        if bundle is None:
            return False
        return self.apply(bundle, emit)

    def apply(self, bundle: Any, emit: Any) -> bool:
        """Stage ``bundle`` in the inactive slot, health-check it on the recent inputs, then commit it and make
        its tensors the adapter's source (:func:`edgetta.sync.slots.apply_verified`), or roll back. Too few
        recent inputs defer the apply to a later safe point."""
        from edgetta.sync.slots import apply_verified

        version = int(bundle.version)
        window = np.stack(list(self.recent)) if self.recent else np.zeros((0, *self.adapter.artifact.input_shape[1:]))
        try:
            result = apply_verified(bundle, store=self.slots, adapter=self.adapter, window=window, policy=self.policy)
        except Exception as exc:  # a slot that cannot be written, a refused commit: keep the last good parameters
            return self._refuse(version, rejection_code(exc), f"apply failed: {exc}", emit)
        if result.code == "window_too_small":
            self._deferred = bundle
            return False
        if not result.committed:
            return self._refuse(version, result.code, result.reason, emit, stats=result.stats)
        old, self.version = self.version, version
        self.metrics.sync_bundle_version(version)
        self.metrics.sync_bundle("applied")
        message = f"bundle {version} applied (was {old}): new source parameters, adaptation restarts from them"
        log_event(self.log, logging.INFO, f"sync: {message}", stream=self.stream, version=version, previous=old)
        fields = {"version": version, "previous": old, "tensors": len(bundle.params), **result.stats}
        emit(Event(self.adapter.batches, RAIL, "bundle_applied", message, fields))
        return True

    def _refuse(self, version: int, code: str, reason: str, emit: Any, stats: dict | None = None) -> bool:
        if self.poller is not None:
            self.poller.reject(version, code)
        self.metrics.sync_bundle("rejected")
        self.metrics.sync_reject(code)
        message = f"bundle {version} rejected ({code}): {reason}; still running on the last good parameters"
        log_event(self.log, logging.WARNING, message, stream=self.stream, version=version, code=code)
        emit(
            Event(
                self.adapter.batches,
                RAIL,
                "bundle_rejected",
                message,
                {"version": version, "code": code, **(stats or {})},
            )
        )
        return False

    # -- threads' reports --------------------------------------------------------------------------------
    def _report(self, kind: str, message: str, fields: dict[str, Any]) -> None:
        """Called from the uploader and poller threads: metrics and a log line now, an event at the next batch."""
        if kind == "uploaded":
            self.metrics.sync_samples("uploaded", int(fields.get("rows", 0)))
            self.metrics.sync_bytes("up", int(fields.get("bytes", 0)))
        elif kind in ("upload_failed",):
            self.metrics.sync_failure("upload")
        elif kind == "poll_failed":
            self.metrics.sync_failure("poll")
        elif kind in ("upload_refused", "upload_dropped"):
            self.metrics.sync_samples("refused", int(fields.get("rows", 0)))
        elif kind == "bundle_verified":
            self.metrics.sync_bytes("down", int(fields.get("bytes", 0)))
        elif kind == "bundle_rejected":
            self.metrics.sync_bundle("rejected")
            self.metrics.sync_reject(str(fields.get("code")))
        level = (
            logging.DEBUG
            if kind == "uploaded"
            else logging.WARNING
            if "fail" in kind or "reject" in kind
            else logging.INFO
        )
        log_event(self.log, level, f"sync: {message}", stream=self.stream, sync_event=kind, **fields)
        if kind != "uploaded":
            with self._events_lock:
                self._events.append(Event(self.adapter.batches, RAIL, kind, message, dict(fields)))

    def counts(self) -> dict[str, Any]:
        """What the summary and tests read: selection counts, queue totals, bundle version."""
        out: dict[str, Any] = dict(self.selector.counts())
        out.update({f"queue_{k}": v for k, v in self.queue.counters().items()})
        out["queued"] = len(self.queue)
        out["bundle_version"] = self.version
        if self.uploader is not None:
            out["bytes_up"] = self.uploader.bytes_up
        if self.poller is not None:
            out["bytes_down"] = self.poller.bytes_down
            out["rejected"] = dict(self.poller.rejected)
        return out


def _base_sha256(artifact: Any) -> str:
    """The base artifact's id as bundles name it (:func:`edgetta.sync.bundle.base_sha256`)."""
    from edgetta.sync.bundle import base_sha256

    return str(base_sha256(artifact))


def build_edge_sync(config: SyncConfig, state_dir: Path, adapter: Any, metrics: Any, log: logging.Logger) -> EdgeSync:
    """An :class:`EdgeSync` verifying with the trusted keys and applying through A/B slots in ``state_dir/sync``."""
    from edgetta.sync.bundle import verify_bundle
    from edgetta.sync.keys import load_public_key
    from edgetta.sync.slots import SlotStore

    config.check_files()
    keys = [load_public_key(p) for p in config.trust]
    artifact = adapter.artifact

    def verify(data: bytes, applied: int | None) -> Any:
        return verify_bundle(data, artifact_dir=artifact, trusted_keys=keys, applied_version=applied)

    slots = SlotStore(state_dir / "sync" / "slots", artifact)
    return EdgeSync(config, state_dir, adapter, metrics=metrics, log=log, slots=slots, verify=verify)


__all__ = ["EdgeSync", "REASONS"]
