"""EATA Fisher anti-forgetting regulariser (Niu et al., ICML 2022, Eq. 8-9).

F_j = mean over calibration batches of the squared gradient of the pseudo-label cross-entropy (Eq. 8);
R(theta) = beta * sum_j F_j (theta_j - theta0_j)^2 (Eq. 9), whose gradient 2 beta F (theta - theta0)
is added to the adapt graph's entropy gradient in numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FisherAccumulator", "fisher_penalty", "fisher_penalty_grad"]


class FisherAccumulator:
    """Accumulate squared gradients (name -> array) over batches; :meth:`mean` gives the diagonal Fisher."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.count = 0

    def update(self, grads: dict[str, np.ndarray]) -> None:
        """Add one batch's gradients; every batch must carry the same keys and shapes."""
        if self.count and set(grads) != set(self._sums):
            raise KeyError(f"FisherAccumulator: keys changed: {sorted(set(grads) ^ set(self._sums))}")
        for name, grad in grads.items():
            g = np.asarray(grad)
            sq = np.square(g.astype(np.float64))
            if name in self._sums:
                if sq.shape != self._sums[name].shape:
                    raise ValueError(f"FisherAccumulator: shape of {name!r} changed to {sq.shape}")
                self._sums[name] += sq
            else:
                self._sums[name] = sq
                self._dtypes[name] = g.dtype if np.issubdtype(g.dtype, np.floating) else np.dtype(np.float32)
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """Diagonal Fisher: mean of squared gradients over the batches seen, in the gradients' dtype."""
        if self.count == 0:
            raise ValueError("FisherAccumulator: no batches accumulated")
        return {k: (s / self.count).astype(self._dtypes[k]) for k, s in self._sums.items()}

    def reset(self) -> None:
        """Drop everything accumulated so far."""
        self._sums.clear()
        self._dtypes.clear()
        self.count = 0


def _deltas(
    params: dict[str, np.ndarray], anchor: dict[str, np.ndarray], fisher: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each Fisher key: (theta - theta0, F) in float64, checking keys and shapes."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, f in fisher.items():
        if name not in params or name not in anchor:
            raise KeyError(f"fisher penalty: {name!r} missing from params or anchor")
        theta = np.asarray(params[name], dtype=np.float64)
        theta0 = np.asarray(anchor[name], dtype=np.float64)
        f64 = np.asarray(f, dtype=np.float64)
        if not theta.shape == theta0.shape == f64.shape:
            raise ValueError(f"fisher penalty: shape mismatch for {name!r}: {theta.shape}, {theta0.shape}, {f64.shape}")
        out[name] = (theta - theta0, f64)
    return out


def fisher_penalty(
    params: dict[str, np.ndarray], anchor: dict[str, np.ndarray], fisher: dict[str, np.ndarray], beta: float
) -> float:
    """beta * sum_j F_j (theta_j - theta0_j)^2 over the parameters present in ``fisher`` (EATA Eq. 9)."""
    return float(beta * sum(np.sum(f * d * d) for d, f in _deltas(params, anchor, fisher).values()))


def fisher_penalty_grad(
    params: dict[str, np.ndarray], anchor: dict[str, np.ndarray], fisher: dict[str, np.ndarray], beta: float
) -> dict[str, np.ndarray]:
    """Gradient of :func:`fisher_penalty`: 2 * beta * F * (theta - theta0), in each parameter's dtype."""
    return {
        name: (2.0 * beta * f * d).astype(np.asarray(params[name]).dtype)
        for name, (d, f) in _deltas(params, anchor, fisher).items()
    }
