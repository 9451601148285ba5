"""The sliding window for calls too small to normalise with their own statistics.

Methods whose predictions depend on the batch (test-batch BatchNorm statistics, LAME's affinities)
fail on a call of one or a few rows: BN over one sample normalises it to its bias. The Adapter then
predicts each new row inside the last ``size`` rows seen (Tent's batch-size-1 recipe in the field's
benchmark libraries) and lets the method update once per ``size`` new rows, so every row feeds exactly
one update, as it would at batch size ``size``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class SlidingWindow:
    """The last ``size`` rows, and how many rows arrived since the last update."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = int(size)
        self.rows: deque[np.ndarray] = deque(maxlen=self.size)
        self.since_update = 0

    def __len__(self) -> int:
        return len(self.rows)

    def push(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """Add the rows of ``x``; return the window to forward and whether this call should update."""
        self.rows.extend(x)
        self.since_update += len(x)
        update = len(self.rows) == self.size and self.since_update >= self.size
        if update:
            self.since_update = 0
        return np.stack(self.rows), update

    def observe(self, x: np.ndarray) -> None:
        """Rows of a call large enough to go straight through (and update): they stay the recent context."""
        self.rows.extend(x)
        self.since_update = 0

    def clear(self) -> None:
        self.rows.clear()
        self.since_update = 0

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"rows": np.stack(self.rows)} if self.rows else {}
        return tensors, {"size": self.size, "since_update": self.since_update}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if int(meta.get("size", self.size)) != self.size:
            raise ValueError(f"window size {meta.get('size')} in the checkpoint, {self.size} configured")
        self.clear()
        if "rows" in tensors:
            self.rows.extend(np.asarray(tensors["rows"], dtype=np.float32))
        self.since_update = int(meta.get("since_update", 0))
