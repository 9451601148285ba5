"""Input checks at the Adapter's door: shape, dtype, finiteness, and the artifact's recorded preprocessing.

Model-ready float inputs pass as they are. Integer inputs (raw uint8 frames) are mapped with the
preprocessing the manifest records (``x * scale``, then ``(x - mean) / std`` per channel); an artifact
that records none refuses them, so the model never silently sees a different input distribution.
Rows that cannot be used get a skip reason; they never reach the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PreparedBatch:
    rows: np.ndarray  # float32 [M, *item_shape], the usable rows
    index: np.ndarray  # int64 [M], their positions in the call
    skipped: list[str | None]  # per input row: a reason, or None when used
    preprocessed: bool = False  # the recorded preprocessing was applied (integer input)


class InputPreparer:
    """Turns whatever a caller passes into model-ready float32 rows plus skip reasons."""

    def __init__(self, item_shape: tuple[int, ...], preprocess: dict[str, Any] | None) -> None:
        self.item_shape = tuple(int(d) for d in item_shape)
        self.preprocess = dict(preprocess or {})

    def _expected(self) -> str:
        return f"[N, {', '.join(map(str, self.item_shape))}]"

    def prepare(self, x: Any) -> PreparedBatch:
        x = np.asarray(x)
        n = int(x.shape[0]) if x.ndim else 1
        if x.ndim != len(self.item_shape) + 1 or tuple(x.shape[1:]) != self.item_shape:
            hint = " (one item without its batch axis: pass x[None])" if tuple(x.shape) == self.item_shape else ""
            reason = f"shape {tuple(x.shape[1:]) if x.ndim else ()} per row, expected {self._expected()}{hint}"
            return self._none(n, reason)
        preprocessed = False
        if np.issubdtype(x.dtype, np.integer):
            if not self.preprocess:
                return self._none(
                    n,
                    f"integer input ({x.dtype}) but the artifact records no preprocessing; pass float32 model-ready "
                    "inputs or export with --mean/--std",
                )
            x, preprocessed = self._apply(x), True
        elif not np.issubdtype(x.dtype, np.floating):
            return self._none(n, f"dtype {x.dtype} is not numeric; pass float32 model-ready inputs")
        finite = np.isfinite(x.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
        index = np.flatnonzero(finite)
        skipped: list[str | None] = [None if ok else "non-finite values in input" for ok in finite]
        rows = np.ascontiguousarray(x[index], dtype=np.float32)
        return PreparedBatch(rows, index, skipped, preprocessed)

    def _none(self, n: int, reason: str) -> PreparedBatch:
        empty = np.zeros((0, *self.item_shape), np.float32)
        return PreparedBatch(empty, np.zeros(0, np.int64), [reason] * n)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        """x * scale, then (x - mean) / std over the channel axis (axis 1 of [N, C, ...])."""
        out = x.astype(np.float32) * np.float32(self.preprocess.get("scale", 1.0))
        shape = (1, -1) + (1,) * (len(self.item_shape) - 1)
        if self.preprocess.get("mean") is not None:
            out = out - np.asarray(self.preprocess["mean"], np.float32).reshape(shape)
        if self.preprocess.get("std") is not None:
            out = out / np.asarray(self.preprocess["std"], np.float32).reshape(shape)
        return out

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in self.preprocess.items() if k in ("scale", "mean", "std")]
        return ", ".join(parts)
