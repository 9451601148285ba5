"""Recover a linear classifier head, logits = f W^T + b, from (features, logits) pairs by least squares.

FOA's output-level activation shift (Niu et al., ICML 2024, Eq. 7) evaluates head(f + s): with a linear
head that is logits + s W^T. A fixed engine exposes only ``features`` and ``logits``; W and b follow
exactly from D + 1 affinely independent pairs (D = feature size). ``fit`` solves in float64 and accepts
the head only when it reproduces the logits it was fitted on to ``tol`` (relative), so a non-linear head
is reported, never silently approximated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LinearHeadFit"]


class LinearHeadFit:
    """Collects pairs until ``rows`` >= ``oversample`` * (D + 1), then fits once."""

    def __init__(self, oversample: float = 2.0, tol: float = 1e-3) -> None:
        self.oversample, self.tol = float(oversample), float(tol)
        self._f: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.weight: np.ndarray | None = None  # [C, D]
        self.bias: np.ndarray | None = None  # [C]
        self.failed: str | None = None  # why the pairs are not a linear head

    @property
    def ready(self) -> bool:
        return self.weight is not None

    def add(self, features: np.ndarray, logits: np.ndarray) -> None:
        """Add pairs (features [N, D], logits [N, C]); fit once there are enough."""
        if self.ready or self.failed:
            return
        self._f.append(np.asarray(features, np.float64).reshape(len(features), -1))
        self._y.append(np.asarray(logits, np.float64))
        rows, dim = sum(len(f) for f in self._f), self._f[0].shape[1]
        if rows >= self.oversample * (dim + 1):
            self._fit()

    def _fit(self) -> None:
        f, y = np.concatenate(self._f), np.concatenate(self._y)
        self._f, self._y = [], []
        design = np.concatenate([f, np.ones((len(f), 1))], axis=1)
        solution, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
        if rank < design.shape[1]:
            self.failed = f"the features span rank {rank} < {design.shape[1]}: the head is not identifiable"
            return
        rel = float(np.linalg.norm(design @ solution - y) / max(np.linalg.norm(y), 1e-12))
        if rel > self.tol:
            self.failed = f"logits are not linear in the features (relative residual {rel:.2e} > {self.tol:g})"
            return
        self.weight, self.bias = solution[:-1].T.copy(), solution[-1].copy()

    def shift(self, logits: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """head(f + delta) given head(f) = ``logits``: logits + delta W^T."""
        assert self.weight is not None
        return (logits + np.asarray(delta, np.float64) @ self.weight.T).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.weight is None else {"weight": self.weight, "bias": self.bias}

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        if "weight" in tensors:
            self.weight, self.bias = np.asarray(tensors["weight"]), np.asarray(tensors["bias"])
