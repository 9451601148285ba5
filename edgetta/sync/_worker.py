"""The background-thread shell shared by the uploader and the poller: start, wake early, stop and join."""

from __future__ import annotations

import threading


class BackgroundWorker:
    """A daemon thread running ``self._run``; ``wake`` cuts a wait short, ``stop_event`` ends the loop."""

    def __init__(self, name: str) -> None:
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:  # pragma: no cover - every worker overrides it
        raise NotImplementedError

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
