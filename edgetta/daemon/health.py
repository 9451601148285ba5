"""Each stream's status and the daemon's health, as ``/healthz`` reports it.

Unhealthy (HTTP 503) when a stream failed, when a running stream made no progress for
``health.stall_seconds``, or when a collapse recovery (the collapse guard, or SAR's own model recovery)
reset one stream ``collapse_resets`` times within ``collapse_window_seconds``. Finished recorded streams are
healthy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edgetta.daemon.config import HealthConfig

# event sources whose resets mean "the model was collapsing": the collapse_guard rail and the sar method's
# model recovery (Niu et al. 2023, which the sar preset uses instead of the rail)
COLLAPSE_RESETTERS = frozenset({"collapse_guard", "sar"})
MAX_COLLAPSE_TIMES = 1024  # reset times kept per stream (pruned by age when /healthz is asked)


@dataclass
class StreamStatus:
    """What the supervisor knows about one stream (updated by its threads, read by /healthz)."""

    name: str
    live: bool | None = None
    state: str = "starting"
    reason: str | None = None
    items: int = 0
    started: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    collapse_resets: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_COLLAPSE_TIMES))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, now: float | None = None) -> None:
        self.last_progress = time.monotonic() if now is None else now

    def set(self, state: str, reason: str | None = None) -> None:
        with self.lock:
            self.state, self.reason = state, reason
            self.progress()

    def collapse_reset(self, now: float | None = None) -> None:
        with self.lock:
            self.collapse_resets.append(time.monotonic() if now is None else now)


def evaluate(statuses: list[StreamStatus], config: HealthConfig, now: float | None = None) -> tuple[bool, dict]:
    """(healthy, JSON payload naming every reason and each stream's state)."""
    now = time.monotonic() if now is None else now
    reasons: list[str] = []
    streams: dict[str, Any] = {}
    for s in statuses:
        with s.lock:
            while s.collapse_resets and now - s.collapse_resets[0] > config.collapse_window_seconds:
                s.collapse_resets.popleft()
            collapses = len(s.collapse_resets)
            idle = now - s.last_progress
            streams[s.name] = {
                "state": s.state,
                "live": s.live,
                "items": s.items,
                "seconds_since_progress": round(idle, 3),
                "collapse_resets_in_window": collapses,
            }
            if s.reason:
                streams[s.name]["reason"] = s.reason
            if s.state == "failed":
                reasons.append(f"stream {s.name} failed: {s.reason}")
            elif s.state in ("starting", "running") and idle > config.stall_seconds:
                reasons.append(
                    f"stream {s.name} stalled: no progress for {idle:.0f} s (limit {config.stall_seconds:g})"
                )
            if collapses >= config.collapse_resets:
                reasons.append(
                    f"stream {s.name}: the collapse guard reset {collapses} times in "
                    f"{config.collapse_window_seconds:g} s (limit {config.collapse_resets})"
                )
    healthy = not reasons
    return healthy, {"status": "ok" if healthy else "unhealthy", "reasons": reasons, "streams": streams}
