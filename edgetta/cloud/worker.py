"""The learner's thread: validated uploads arrive through a bounded queue, so HTTP requests never wait for
training; a bundle is published every ``publish_every`` learning steps and whenever asked."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from edgetta.cloud.store import BundleInfo, BundleStore
from edgetta.cloud.uploads import Upload

log = logging.getLogger("edgetta.cloud")


class Learner(Protocol):
    """What the service needs of a learner (see :class:`edgetta.cloud.learner.CemaLearner`)."""

    def add(self, x: np.ndarray) -> None:
        """Take newly uploaded samples."""

    def step(self) -> bool:
        """One learning step on the new samples held (plus replay); False when too few are held."""

    def replay_step(self) -> bool:
        """One step on replayed samples only (an upload arrived but completed no batch); False when skipped."""

    def params(self) -> Mapping[str, np.ndarray]:
        """The parameters a bundle carries now (copies)."""


class LearnerWorker:
    """Runs ``learner`` in a daemon thread fed by a queue of at most ``max_queue`` uploads."""

    def __init__(self, learner: Learner, store: BundleStore, publish_every: int, max_queue: int = 64) -> None:
        self.learner = learner
        self.store = store
        self.publish_every = publish_every
        self._queue: queue.Queue[Upload | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()  # learner state: steps vs. parameter snapshots
        self._thread = threading.Thread(target=self._run, name="edgetta-learner", daemon=True)
        self.steps = 0
        self.samples = 0
        self.batches = 0
        self.last_error: str | None = None
        self._since_publish = 0
        self._busy = False

    def start(self) -> LearnerWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the upload in progress and end the thread (queued uploads are dropped)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, upload: Upload) -> bool:
        """Queue an upload without waiting; False when the queue is full (the caller answers 429)."""
        try:
            self._queue.put_nowait(upload)
        except queue.Full:
            return False
        return True

    def idle(self) -> bool:
        """True when every queued upload has been learned from."""
        return self._queue.unfinished_tasks == 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is drained (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def publish(self) -> BundleInfo:
        """Publish the learner's current parameters as the next bundle version."""
        with self._lock:
            params = {k: np.array(v, copy=True) for k, v in self.learner.params().items()}
        info = self.store.publish(params)
        self._since_publish = 0
        log.info("published bundle version %d (%d bytes)", info.version, info.size)
        return info

    def _learn(self, upload: Upload) -> None:
        with self._lock:
            self.learner.add(upload.x)
            stepped = 0
            while self.learner.step():
                stepped += 1
            if not stepped and self.learner.replay_step():
                stepped = 1
            self.samples += upload.count
            self.batches += 1
            self.steps += stepped
        self._since_publish += stepped
        if self.publish_every and self._since_publish >= self.publish_every:
            self.publish()

    def _run(self) -> None:
        while True:
            upload = self._queue.get()
            try:
                if upload is None:
                    return
                self._learn(upload)
            except Exception as exc:  # noqa: BLE001 - keep serving; the error is reported on /healthz
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("learner step failed")
            finally:
                self._queue.task_done()
