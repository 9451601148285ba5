"""Reconnect pacing for live sources: exponential backoff with jitter, interruptible by ``close()``.

Attempt k (0-based) waits ``min(maximum, initial * factor**k)`` seconds times a random factor in
``[1 - jitter, 1 + jitter]``, so many devices that lost the same server do not all retry at the same
moment. ``attempts`` bounds the reconnects in a row (None: retry forever, the default for a daemon).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from edgetta.streams.spec import SpecReader

BACKOFF_KEYS = ("initial", "max", "factor", "jitter", "attempts")


@dataclass
class Backoff:
    """Delays between reconnect attempts (seconds)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    attempts: int | None = None
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` failures so far, from 0)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return max(0.0, base * (1.0 + self.jitter * self._rng.uniform(-1.0, 1.0)))

    def exhausted(self, failures: int) -> bool:
        """True once ``failures`` failed attempts in a row reach ``attempts``."""
        return self.attempts is not None and failures >= self.attempts

    def wait(self, stop: threading.Event, attempt: int) -> bool:
        """Sleep :meth:`delay` unless ``stop`` is set first; True when the caller should try again."""
        return not stop.wait(self.delay(attempt))


def read_backoff(reader: SpecReader) -> Backoff:
    """A :class:`Backoff` from the ``reconnect`` mapping of a live source spec (every key optional)."""
    sub = reader.sub("reconnect")
    sub.allowed.extend(BACKOFF_KEYS)
    initial = sub.number("initial", 0.5, minimum=0.0, meaning="seconds before the first retry")
    maximum = sub.number("max", 30.0, minimum=0.0, meaning="longest wait in seconds")
    factor = sub.number("factor", 2.0, minimum=1.0)
    jitter = sub.number("jitter", 0.25, minimum=0.0, maximum=1.0, meaning="fraction of the wait")
    attempts = sub.number("attempts", None, minimum=1, integer=True, meaning="failed attempts in a row, null: forever")
    sub.finish()
    if maximum < initial:
        raise sub.error("max", f"{maximum:g} s is shorter than initial {initial:g} s")
    return Backoff(initial=initial, maximum=maximum, factor=factor, jitter=jitter, attempts=attempts)


# (kind, message), e.g. ("disconnected", "camera 0: read failed"); kinds are listed in docs/sources.md
EventHook = Callable[[str, str], None]


def notify(hook: EventHook | None, kind: str, message: str) -> None:
    """Call the source's event hook, if any; a failing hook never stops the stream."""
    if hook is None:
        return
    try:
        hook(kind, message)
    except Exception:  # noqa: BLE001 - observers must not break the source
        pass
