"""Diagonal Fisher information of the trainable norm parameters from in-distribution data.

EATA (Niu et al., ICML 2022, Eq. 9): F_j = mean over batches of (d CE(f(x), argmax f(x)) / d theta_j)^2,
computed with batch statistics (bn_alpha = 1) on ~2000 samples in batches of 64. It runs on the
exported adapt graph itself (entropy weight 0, CE weight 1/B), so the same code works on device.
"""

from __future__ import annotations

import numpy as np


def fisher_diagonal(
    adapt_session,
    input_name: str,
    calib: np.ndarray,
    params: dict[str, np.ndarray],
    grad_names: dict[str, str],
    batch_size: int = 64,
    bn_alpha: float = 1.0,
) -> dict[str, np.ndarray]:
    if calib.shape[0] == 0:
        raise ValueError("calibration set is empty: pass at least one in-distribution sample")
    totals = {name: np.zeros_like(params[name], dtype=np.float64) for name in grad_names}
    outputs = [o.name for o in adapt_session.get_outputs()]
    batches = 0
    for start in range(0, calib.shape[0], batch_size):
        x = np.ascontiguousarray(calib[start : start + batch_size], dtype=np.float32)
        b = x.shape[0]
        feed = {
            input_name: x,
            "bn_alpha": np.asarray(bn_alpha, dtype=np.float32),
            "entropy_weight": np.zeros(b, np.float32),
            "ce_weight": np.full(b, 1.0 / b, np.float32),
            **params,
        }
        result = dict(zip(outputs, adapt_session.run(None, feed)))
        for name, grad_name in grad_names.items():
            totals[name] += np.square(result[grad_name].astype(np.float64))
        batches += 1
    return {name: (total / batches).astype(np.float32) for name, total in totals.items()}
