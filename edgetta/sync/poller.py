"""The bundle poller thread: finds, downloads and verifies new bundles; the inference thread applies them.

The poller asks ``GET /v1/bundles/latest`` every ``interval`` seconds times a random factor in
``[1 - jitter, 1 + jitter]`` (a fleet does not poll in step), downloads a bundle newer than the applied one,
verifies it (signature, key, hashes, version, expiry, base artifact, tensors: ``verify``, the same code as
``edgetta bundle verify``) and hands a verified bundle to the inference thread, which applies it between two
batches (:meth:`Poller.take`). A rejected version is reported with its reason code once and not fetched again;
the device keeps running on its last good parameters. Network failures back off with jitter.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from edgetta.streams.backoff import Backoff
from edgetta.sync._edge_client import SyncClient
from edgetta.sync._worker import BackgroundWorker

Report = Callable[[str, str, dict[str, Any]], None]
# verify(data, applied_version) -> a verified bundle (version, params, metadata, key_id); raises on rejection
Verify = Callable[[bytes, int | None], Any]


def _quiet(kind: str, message: str, fields: dict[str, Any]) -> None:
    """Default reporter: nothing."""


def rejection_code(exc: BaseException) -> str:
    """The machine-readable reason of a rejection (``BundleRejected.code``), else the exception's type."""
    return str(getattr(exc, "code", None) or type(exc).__name__)


class Poller(BackgroundWorker):
    """Background poller of one server. ``applied_version()`` is read on every poll (it changes on apply)."""

    def __init__(
        self,
        client: SyncClient,
        verify: Verify,
        applied_version: Callable[[], int | None],
        *,
        interval: float = 30.0,
        jitter: float = 0.2,
        backoff: Backoff | None = None,
        report: Report = _quiet,
        seed: int | None = None,
    ) -> None:
        self.client, self.verify, self.applied_version = client, verify, applied_version
        self.interval, self.jitter = float(interval), float(jitter)
        self.backoff = backoff or Backoff(initial=1.0, maximum=max(1.0, interval))
        self.report = report
        self.rng = random.Random(seed)
        self.counters: Counter[str] = Counter()
        self.rejected: dict[int, str] = {}  # version -> reason code, never fetched again
        self.offered: set[int] = set()  # versions handed to the inference thread (applied or rejected there)
        self.bytes_down = 0
        self.failures = 0
        self._pending: Any = None
        self._lock = threading.Lock()
        super().__init__("edgetta-sync-poll")

    def poll_now(self) -> None:
        """Poll at once (a server push, or a test)."""
        self.wake.set()

    def take(self) -> Any:
        """The verified bundle waiting to be applied, if any (it is handed out once)."""
        with self._lock:
            bundle, self._pending = self._pending, None
        return bundle

    def reject(self, version: int, code: str) -> None:
        """Remember that ``version`` failed (here or at apply time): it is not fetched again."""
        self.rejected[int(version)] = code
        self.counters[f"rejected_{code}"] += 1

    # -- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                ok = self.poll_once()
            except Exception as exc:  # a bug must not end polling for good: report it and back off
                self.report("poll_failed", f"bundle poll failed: {type(exc).__name__}: {exc}", {"status": 0})
                ok = False
            if ok:
                self.failures = 0
                delay = self.next_delay()
            else:
                delay = self.backoff.delay(self.failures)
                self.failures += 1
            self.wake.wait(max(0.0, delay))
            self.wake.clear()

    def next_delay(self) -> float:
        """Seconds until the next poll: ``interval`` times a random factor in [1 - jitter, 1 + jitter]."""
        return self.interval * (1.0 + self.jitter * self.rng.uniform(-1.0, 1.0))

    def poll_once(self) -> bool:
        """One poll (and download and verification when a newer bundle exists); False on a network failure."""
        with self._lock:
            waiting = self._pending is not None
        if waiting:
            return True  # the inference thread has not applied the last one yet
        self.counters["polls"] += 1
        reply = self.client.latest()
        if reply.status == 204:
            return True
        if reply.status != 200:
            self._fail(f"bundle poll failed ({reply.message()})", reply.status)
            return False
        info = reply.json()
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("version"), int)
            or not isinstance(info.get("url"), str)
        ):
            self._fail(f"bundle poll: unexpected answer {reply.body[:200]!r}", reply.status)
            return False
        version = int(info["version"])
        applied = self.applied_version()
        if (applied is not None and version <= applied) or version in self.rejected or version in self.offered:
            return True
        data = self.client.download(info["url"])
        if data.status != 200:
            self._fail(f"bundle {version} download failed ({data.message()})", data.status)
            return False
        self.bytes_down += len(data.body)
        self.counters["downloads"] += 1
        try:
            bundle = self.verify(data.body, applied)
        except Exception as exc:  # BundleRejected with .code, or a bug in the bundle: either way not applied
            code = rejection_code(exc)
            self.reject(version, code)
            self.report(
                "bundle_rejected",
                f"bundle {version} rejected ({code}): {exc}; still running on the last good parameters",
                {"version": version, "code": code, "stage": "verify"},
            )
            return True
        self.report(
            "bundle_verified",
            f"bundle {version} verified (key {getattr(bundle, 'key_id', '?')}, {len(data.body)} bytes)",
            {"version": version, "bytes": len(data.body)},
        )
        with self._lock:
            self._pending = bundle
            self.offered.add(version)
        return True

    def _fail(self, message: str, status: int) -> None:
        self.counters["poll_failures"] += 1
        if self.failures == 0 or self.failures % 10 == 0:
            self.report("poll_failed", message, {"status": status, "failures": self.failures + 1})
