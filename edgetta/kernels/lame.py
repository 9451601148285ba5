"""LAME: Laplacian-regularised maximum-likelihood output adjustment (Boudiaf et al., CVPR 2022).

No parameter changes: per batch, the predictions p [B, C] are replaced by assignments Y minimising
the paper's Laplacian-regularised objective (Eq. 4, in the entropy form used by the released code)

    E(Y) = sum_i [ Y_i . log Y_i - Y_i . log p_i ] - lam * sum_ij W_ij Y_i . Y_j,

via the bound-optimisation fixed point of Eq. 5 / Algorithm 1, Y <- softmax(log p + lam * W @ Y),
started from Y = p, for at most ``max_iter`` iterations, stopping once |E_t - E_{t-1}| <= tol |E_{t-1}|.

Affinities are built on L2-normalised features:
  * ``knn``: W_ij = 1 iff j is one of the k nearest (cosine) neighbours of i, j != i. Like the
    authors' released code, W is NOT symmetrised (each row has exactly k ones).
  * ``rbf``: W_ij = exp(-||f_i - f_j||^2 / (2 sigma^2)), sigma = mean over i of the distance to the
    k-th nearest neighbour (self excluded) unless given; the diagonal (= 1) is kept, as released.
  * ``linear``: W = F F^T clipped at 0 (cosine similarity, diagonal kept).
k is clipped to B - 1; a batch of one sample is returned unchanged.
"""

from __future__ import annotations

import numpy as np

from edgetta.kernels.softmax import softmax

__all__ = ["AFFINITIES", "affinity_matrix", "lame", "lame_energy"]

AFFINITIES = ("knn", "rbf", "linear")
_PROB_FLOOR = 1e-10  # log p floor for zero probabilities (the released code adds 1e-10)
_SIGMA_FLOOR = 1e-12


def _normalise(features: np.ndarray) -> np.ndarray:
    feats = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-12)


def affinity_matrix(
    features: np.ndarray, affinity: str = "knn", knn: int = 5, sigma: float | None = None
) -> np.ndarray:
    """Affinity W [B, B] (float64) from features [B, D]; see the module docstring for each kind."""
    if affinity not in AFFINITIES:
        raise ValueError(f"unknown affinity {affinity!r}; valid: {', '.join(AFFINITIES)}")
    if knn < 1:
        raise ValueError(f"knn must be >= 1, got {knn}")
    feats = _normalise(np.asarray(features))
    n = feats.shape[0]
    sim = feats @ feats.T
    if affinity == "linear":
        return np.maximum(sim, 0.0)
    k = min(knn, n - 1)
    if k < 1:
        return np.zeros((n, n)) if affinity == "knn" else np.ones((n, n))
    others = sim.copy()
    np.fill_diagonal(others, -np.inf)  # never your own neighbour
    neighbours = np.argsort(-others, axis=1, kind="stable")[:, :k]
    if affinity == "knn":
        w = np.zeros((n, n))
        np.put_along_axis(w, neighbours, 1.0, axis=1)
        return w
    sq_dist = np.maximum(2.0 - 2.0 * sim, 0.0)  # ||a - b||^2 for unit vectors
    np.fill_diagonal(sq_dist, 0.0)
    if sigma is None:
        kth = np.take_along_axis(sq_dist, neighbours[:, -1:], axis=1)[:, 0]
        sigma = float(np.mean(np.sqrt(kth)))
    elif sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    sigma = max(float(sigma), _SIGMA_FLOOR)
    return np.exp(-sq_dist / (2.0 * sigma**2))


def lame_energy(y: np.ndarray, log_p: np.ndarray, w: np.ndarray, lam: float) -> float:
    """E(Y) = sum Y log Y - sum Y log p - lam * sum_ij W_ij Y_i . Y_j (Eq. 4, entropy form)."""
    ylogy = np.where(y > 0.0, y * np.log(np.where(y > 0.0, y, 1.0)), 0.0)
    return float(np.sum(ylogy) - np.sum(y * log_p) - lam * np.sum(y * (w @ y)))


def lame(
    probs: np.ndarray,
    features: np.ndarray,
    affinity: str = "knn",
    knn: int = 5,
    sigma: float | None = None,
    lam: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> np.ndarray:
    """Adjusted probabilities [B, C] (rows sum to 1, dtype of ``probs``) from probs [B, C] and features [B, D]."""
    p = np.asarray(probs)
    feats = np.asarray(features)
    if p.ndim != 2:
        raise ValueError(f"lame: expected probs [B, C], got {p.shape}")
    if feats.ndim < 2 or feats.shape[0] != p.shape[0]:
        raise ValueError(f"lame: features {feats.shape} do not match probs {p.shape}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    if p.shape[0] <= 1:
        return p.astype(out_dtype, copy=True)
    w = affinity_matrix(feats, affinity=affinity, knn=knn, sigma=sigma)
    log_p = np.log(np.maximum(p.astype(np.float64), _PROB_FLOOR))
    y = softmax(log_p)
    prev = np.inf
    for _ in range(max_iter):
        y = softmax(log_p + lam * (w @ y))
        energy = lame_energy(y, log_p, w, lam)
        if np.isfinite(prev) and abs(energy - prev) <= tol * abs(prev):
            break
        prev = energy
    return y.astype(out_dtype)
