"""Sleep-staging metrics (numpy only): confusion matrix, accuracy, per-stage precision/recall/F1, macro-F1
and Cohen's kappa, as reported by DeepSleepNet, TinySleepNet and SleePyCo on Sleep-EDF.

Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement (the
confusion matrix's trace over its total) and p_e = sum_k (row_k / n)(col_k / n) the agreement expected by
chance from the marginals. Macro-F1 is the unweighted mean of the per-stage F1 = 2PR / (P + R); a stage
absent from both truth and prediction has no F1 and is left out of the mean (``None`` in the report).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetta.errors import DataError

__all__ = ["confusion", "cohen_kappa", "macro_f1", "per_stage", "report"]

NUM_STAGES = 5


def _labels(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.int64).reshape(-1)
    p = np.asarray(pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise DataError(f"{t.size} true stages but {p.size} predictions; pass one prediction per scored epoch")
    return t, p


def confusion(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, k: int = NUM_STAGES) -> np.ndarray:
    """k x k counts, rows = true stage, columns = predicted stage. Epochs with a label outside [0, k) (the
    readers' -1 for unscored epochs) are left out; a prediction outside [0, k) is an error."""
    t, p = _labels(truth, pred)
    keep = (t >= 0) & (t < k)
    t, p = t[keep], p[keep]
    if np.any((p < 0) | (p >= k)):
        raise DataError(f"predictions must be stage indices in [0, {k}); got {sorted(set(p[(p < 0) | (p >= k)]))}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a confusion matrix; 0.0 when chance agreement is perfect (p_e = 1)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    p_o = np.trace(cm) / n
    p_e = float(np.sum(cm.sum(axis=1) * cm.sum(axis=0))) / (n * n)
    return 0.0 if p_e >= 1.0 else float((p_o - p_e) / (1.0 - p_e))


def per_stage(cm: np.ndarray) -> list[dict[str, float | int | None]]:
    """Per stage: precision, recall, F1 (None when undefined: no prediction / no true epoch of it) and support."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    rows = []
    for k in range(cm.shape[0]):
        precision = tp[k] / predicted[k] if predicted[k] else None
        recall = tp[k] / actual[k] if actual[k] else None
        if predicted[k] == 0 and actual[k] == 0:
            f1 = None
        else:
            f1 = 2.0 * tp[k] / (predicted[k] + actual[k])  # = 2PR/(P+R), defined as 0 when either is 0
        rows.append(
            {
                "precision": None if precision is None else float(precision),
                "recall": None if recall is None else float(recall),
                "f1": None if f1 is None else float(f1),
                "support": int(actual[k]),
            }
        )
    return rows


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the stages present in the truth or the predictions."""
    scores = [row["f1"] for row in per_stage(cm) if row["f1"] is not None]
    return float(np.mean(scores)) if scores else float("nan")


def report(
    truth: Sequence[int] | np.ndarray,
    pred: Sequence[int] | np.ndarray,
    stages: Sequence[str] = ("W", "N1", "N2", "N3", "REM"),
) -> dict[str, Any]:
    """Every metric of one set of predictions (JSON-able): epochs, accuracy, macro_f1, kappa, per-stage
    precision/recall/F1/support keyed by stage name, and the confusion matrix (rows = true stages)."""
    cm = confusion(truth, pred, len(stages))
    n = int(cm.sum())
    return {
        "epochs": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "macro_f1": macro_f1(cm),
        "kappa": cohen_kappa(cm),
        "per_stage": dict(zip(stages, per_stage(cm), strict=True)),
        "confusion": cm.tolist(),
        "confusion_rows": list(stages),
    }
