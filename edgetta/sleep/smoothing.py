"""Optional causal median filter of the predicted stages: the stage shown for epoch t is the median of the
raw stages of epochs t-k+1..t (fewer at the start of a record), so no epoch waits for later ones.

Stage indices are ordinal only in part (W, N1, N2, N3, REM), so the median of an even-length or mixed window
is taken as the lower median of the sorted values, always one of the stages seen. A window of 1 is the
identity. It removes single-epoch flips at a delay of at most (k - 1) / 2 epochs on a real transition.
"""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["CausalMedian", "causal_median"]


class CausalMedian:
    """Streaming causal median over the last ``window`` stages; ``reset`` at a new record."""

    def __init__(self, window: int = 3) -> None:
        if int(window) != window or window < 1:
            raise ValueError(f"median window must be a positive integer number of epochs, got {window}")
        self.window = int(window)
        self.recent: deque[int] = deque(maxlen=self.window)

    def reset(self) -> None:
        self.recent.clear()

    def __call__(self, stage: int) -> int:
        self.recent.append(int(stage))
        ordered = sorted(self.recent)
        return ordered[(len(ordered) - 1) // 2]


def causal_median(stages: np.ndarray, window: int = 3) -> np.ndarray:
    """Causal median of a record's stage sequence (int [n])."""
    f = CausalMedian(window)
    return np.asarray([f(s) for s in np.asarray(stages).reshape(-1)], dtype=np.int64)
