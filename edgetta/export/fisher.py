"""Diagonal Fisher information of the trainable norm parameters from in-distribution data.

EATA (Niu et al., ICML 2022, Eq. 9): F_j = mean over batches of (d CE(f(x), argmax f(x)) / d theta_j)^2,
computed with batch statistics (bn_alpha = 1) on ~2000 samples in batches of 64. It runs on the
exported adapt graph itself (entropy weight 0, CE weight 1/B), so the same code works on device.
``load_calibration`` reads the calibration inputs (``edgetta export --calib FILE.npz``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgetta.contract import BN_ALPHA, CE_WEIGHT, ENTROPY_WEIGHT, SOFT_TARGET, SOFT_WEIGHT
from edgetta.errors import ExportError


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
            BN_ALPHA: np.asarray(bn_alpha, dtype=np.float32),
            ENTROPY_WEIGHT: np.zeros(b, np.float32),
            CE_WEIGHT: np.full(b, 1.0 / b, np.float32),
            **_soft_zeros(adapt_session, b),
            **params,
        }
        result = dict(zip(outputs, adapt_session.run(None, feed)))
        for name, grad_name in grad_names.items():
            totals[name] += np.square(result[grad_name].astype(np.float64))
        batches += 1
    return {name: (total / batches).astype(np.float32) for name, total in totals.items()}


def _soft_zeros(adapt_session, batch: int) -> dict[str, np.ndarray]:
    """Zero soft-target inputs (contract v2) for a graph that has them: the soft term then adds nothing."""
    shapes = {i.name: i.shape for i in adapt_session.get_inputs()}
    if SOFT_TARGET not in shapes:
        return {}
    classes = int(shapes[SOFT_TARGET][1])
    return {SOFT_TARGET: np.zeros((batch, classes), np.float32), SOFT_WEIGHT: np.zeros(batch, np.float32)}


def load_calibration(path: str | Path) -> np.ndarray:
    """The in-distribution inputs of a calibration file: an NPZ holding an array ``x`` (batch first)."""
    file = Path(path)
    hint = "--calib takes an NPZ file with an array 'x' of in-distribution inputs: np.savez(path, x=inputs)"
    if not file.is_file():
        raise ExportError(f"calibration file {file} does not exist; {hint}")
    try:
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ExportError(f"calibration file {file} is not an NPZ archive ({exc}); {hint}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ExportError(f"calibration file {file} holds a single .npy array, not an NPZ archive; {hint}")
    with data:
        if "x" not in data.files:
            raise ExportError(f"calibration file {file} has no array 'x' (it has: {', '.join(data.files) or 'none'})")
        try:
            x = data["x"]
        except ValueError as exc:  # an object array needs pickle
            raise ExportError(f"calibration file {file}: array 'x' is not numeric ({exc}); {hint}") from exc
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise ExportError(
            f"calibration file {file}: array 'x' must be numeric with a batch dimension first, "
            f"got {x.dtype} of shape {x.shape}"
        )
    return x
