"""A one-line progress bar for terminals: done/total, rate and ETA; silent when not on a TTY."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 30
CLEAR_TO_END = "\x1b[K"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``advance(n)`` after each batch; ``close()`` ends the line. ``total`` None: a count without a bar."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.min_interval = min_interval
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = float("-inf")
        self._extra = ""

    def advance(self, n: int, extra: str = "") -> None:
        self.update(self.done + n, extra)

    def update(self, done: int, extra: str = "") -> None:
        self.done, self._extra = done, extra
        if not self.enabled:
            return
        finished = self.total is not None and done >= self.total
        if finished or time.perf_counter() - self._last_draw >= self.min_interval:
            self._draw()

    def _draw(self) -> None:
        now = time.perf_counter()
        self._last_draw = now
        # \x1b[K clears what a longer previous line left behind.
        self.stream.write("\r" + self.line(self.done, now - self.started, self._extra) + CLEAR_TO_END)
        self.stream.flush()

    def line(self, done: int, elapsed: float, extra: str = "") -> str:
        """The text of the bar (cut to the terminal width so that it never wraps)."""
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [self.label]
        if self.total:
            frac = min(done / self.total, 1.0)
            parts.append(f"[{'#' * int(BAR_WIDTH * frac):<{BAR_WIDTH}}] {done}/{self.total}")
        else:
            parts.append(str(done))
        parts.append(f"{rate:,.0f}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock(max(self.total - done, 0) / rate)}")
        if extra:
            parts.append(extra)
        width = shutil.get_terminal_size((120, 24)).columns - 1
        return " ".join(parts)[:width]

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
