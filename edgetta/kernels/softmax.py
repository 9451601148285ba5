"""Numerically stable softmax, log-softmax and per-sample Shannon entropy.

Entropy follows the Tent definition (Wang et al., ICLR 2021, Eq. 1), H(p) = -sum_c p_c log p_c,
computed as H = logsumexp(z) - sum_c p_c z_c so it never takes the log of an underflowed
probability. All work is done in float64; a floating input keeps its dtype on output (float32 in,
float32 out), any other input comes back as float64. Rows that are entirely -inf are undefined (NaN).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["entropy", "log_softmax", "softmax"]


def _prepare(logits: ArrayLike) -> tuple[np.ndarray, np.dtype]:
    """Return (float64 working copy, dtype to return)."""
    arr = np.asarray(logits)
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    return arr.astype(np.float64, copy=False), out_dtype


def _shifted(work: np.ndarray, axis: int) -> np.ndarray:
    """Subtract the per-row maximum so exp() cannot overflow."""
    return work - np.max(work, axis=axis, keepdims=True)


def log_softmax(logits: ArrayLike, axis: int = -1) -> np.ndarray:
    """log softmax(z) = (z - max z) - log sum exp(z - max z) along ``axis``."""
    work, out_dtype = _prepare(logits)
    shifted = _shifted(work, axis)
    out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return out.astype(out_dtype, copy=False)


def softmax(logits: ArrayLike, axis: int = -1) -> np.ndarray:
    """softmax(z) = exp(z - max z) / sum exp(z - max z) along ``axis``."""
    work, out_dtype = _prepare(logits)
    exps = np.exp(_shifted(work, axis))
    out = exps / np.sum(exps, axis=axis, keepdims=True)
    return out.astype(out_dtype, copy=False)


def entropy(logits: ArrayLike) -> np.ndarray:
    """Per-sample Shannon entropy in nats over the last axis: [..., C] -> [...] (e.g. [B, C] -> [B])."""
    work, out_dtype = _prepare(logits)
    shifted = _shifted(work, -1)
    exps = np.exp(shifted)
    total = np.sum(exps, axis=-1, keepdims=True)
    probs = exps / total
    # 0 * (-inf) would be NaN for masked (-inf) logits; their contribution is exactly 0.
    weighted = np.where(probs > 0.0, probs * np.where(np.isfinite(shifted), shifted, 0.0), 0.0)
    ent = np.log(total[..., 0]) - np.sum(weighted, axis=-1)
    return np.maximum(ent, 0.0).astype(out_dtype, copy=False)
