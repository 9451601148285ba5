"""Sleep metrics against values computed by hand (and against scikit-learn when it happens to be installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgetta.errors import DataError
from edgetta.sleep.metrics import cohen_kappa, confusion, macro_f1, per_stage, report

# W, N1, N2, N3, REM = 0..4
TRUTH = [0, 0, 1, 1, 2, 2, 2, 3, 4, 4]
PRED = [0, 1, 1, 1, 2, 2, 0, 3, 4, 2]


def test_confusion_rows_are_true_stages() -> None:
    cm = confusion(TRUTH, PRED)
    assert cm.tolist() == [
        [1, 1, 0, 0, 0],
        [0, 2, 0, 0, 0],
        [1, 0, 2, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 0, 1],
    ]


def test_kappa_accuracy_and_f1_by_hand() -> None:
    r = report(TRUTH, PRED)
    # p_o = 7/10; p_e = (2*2 + 2*3 + 3*3 + 1*1 + 2*1) / 100 = 0.22; kappa = 0.48 / 0.78
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["kappa"] == pytest.approx(0.48 / 0.78)
    # F1 = 2 TP / (predicted + true): W 2/4, N1 4/5, N2 4/6, N3 2/2, REM 2/3
    f1 = [0.5, 0.8, 4 / 6, 1.0, 2 / 3]
    assert [r["per_stage"][s]["f1"] for s in ("W", "N1", "N2", "N3", "REM")] == pytest.approx(f1)
    assert r["macro_f1"] == pytest.approx(sum(f1) / 5)
    assert r["per_stage"]["N1"]["precision"] == pytest.approx(2 / 3)
    assert r["per_stage"]["N1"]["recall"] == pytest.approx(1.0)
    assert r["per_stage"]["REM"]["precision"] == pytest.approx(1.0)
    assert r["per_stage"]["REM"]["recall"] == pytest.approx(0.5)
    assert r["per_stage"]["N2"]["support"] == 3
    assert r["epochs"] == 10 and r["confusion_rows"] == ["W", "N1", "N2", "N3", "REM"]


def test_kappa_with_unequal_marginals() -> None:
    # p_o = 2/4; p_e = (3*1 + 1*3) / 16 = 0.375; kappa = 0.125 / 0.625 = 0.2
    assert cohen_kappa(confusion([0, 0, 0, 1], [0, 1, 1, 1])) == pytest.approx(0.2)


def test_edge_cases() -> None:
    assert cohen_kappa(confusion([0, 1, 2], [0, 1, 2])) == pytest.approx(1.0)
    # everything in one class on both sides: chance agreement is 1, kappa defined as 0
    assert cohen_kappa(confusion([2, 2, 2], [2, 2, 2])) == 0.0
    # systematic disagreement on two balanced classes: kappa -1
    assert cohen_kappa(confusion([0, 0, 1, 1], [1, 1, 0, 0])) == pytest.approx(-1.0)
    # unscored epochs (-1) are left out
    assert confusion([-1, 0, 1], [3, 0, 1]).sum() == 2
    # a stage absent from truth and predictions has no F1 and does not count in the mean
    rows = per_stage(confusion([0, 1], [0, 1]))
    assert rows[3]["f1"] is None and rows[3]["precision"] is None
    assert macro_f1(confusion([0, 1], [0, 1])) == pytest.approx(1.0)
    # predicted but never true: precision 0, recall undefined, F1 0
    rows = per_stage(confusion([0, 0], [0, 1]))
    assert rows[1] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="one prediction per scored epoch"):
        confusion([0, 1], [0])
    with pytest.raises(DataError, match="stage indices"):
        confusion([0, 1], [0, 7])


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="cross-check only; sklearn is not a dependency")
def test_matches_sklearn() -> None:
    from sklearn.metrics import cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 500)
    p = np.where(rng.random(500) < 0.6, t, rng.integers(0, 5, 500))
    r = report(t, p)
    assert r["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert r["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
