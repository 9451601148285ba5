"""EATA redundancy filter (Niu et al., ICML 2022, Sec. 4.1, Eq. 6-7).

A moving average m of the model's mean prediction is kept; a sample is kept only when its probability
vector is not too similar to m, |cos(m, p_i)| < eps (Eq. 6). After filtering,
m <- momentum * m + (1 - momentum) * mean_i p_i over the kept samples (Eq. 7); m is initialised from
the first batch it is updated with, and an empty batch leaves it unchanged (as in the released code).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RedundancyFilter", "cosine_to"]

_NORM_FLOOR = 1e-8  # same guard as torch.nn.functional.cosine_similarity


def cosine_to(vec: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cosine similarity of one vector [C] to every row of ``probs`` [B, C] -> [B] (float64)."""
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != v.shape[0]:
        raise ValueError(f"cosine_to: expected probs [B, {v.shape[0]}], got {p.shape}")
    denom = np.maximum(np.linalg.norm(v), _NORM_FLOOR) * np.maximum(np.linalg.norm(p, axis=1), _NORM_FLOOR)
    return (p @ v) / denom


class RedundancyFilter:
    """Drop samples whose prediction nearly duplicates the running mean prediction (EATA Eq. 6-7)."""

    def __init__(self, eps: float, momentum: float = 0.9) -> None:
        if eps <= 0.0:
            raise ValueError(f"eps must be positive, got {eps}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.m: np.ndarray | None = None

    def mask(self, probs_selected: np.ndarray) -> np.ndarray:
        """Boolean keep-mask [B]: True iff |cos(m, p_i)| < eps; all True before m exists."""
        probs = np.asarray(probs_selected)
        if probs.ndim != 2:
            raise ValueError(f"mask: expected probs [B, C], got shape {probs.shape}")
        if self.m is None:
            return np.ones(probs.shape[0], dtype=bool)
        return np.abs(cosine_to(self.m, probs)) < self.eps

    def update(self, probs_kept: np.ndarray) -> None:
        """m <- momentum * m + (1 - momentum) * mean(p_kept); first non-empty batch initialises m."""
        probs = np.asarray(probs_kept, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"update: expected probs [B, C], got shape {probs.shape}")
        if probs.shape[0] == 0:
            return
        mean = probs.mean(axis=0)
        if self.m is None:
            self.m = mean
        else:
            if mean.shape != self.m.shape:
                raise ValueError(f"update: class count changed from {self.m.shape[0]} to {mean.shape[0]}")
            self.m = self.momentum * self.m + (1.0 - self.momentum) * mean

    def reset(self) -> None:
        """Forget the running mean (e.g. on a hard reset to the source model)."""
        self.m = None

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays for checkpointing: {"m": [C]} or {} before the first update."""
        return {} if self.m is None else {"m": self.m.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""
        m = state.get("m")
        self.m = None if m is None else np.asarray(m, dtype=np.float64).reshape(-1).copy()
