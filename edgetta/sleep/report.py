"""What ``edgetta sleep stage`` writes: ``epochs.csv`` (one row per kept epoch) and ``metrics.json`` (frozen
and adapted side by side), and the cohort table of ``edgetta sleep eval``."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.sleep.metrics import report
from edgetta.sleep.pipeline import StagedNight

__all__ = ["EPOCH_COLUMNS", "cohort_metrics", "night_metrics", "write_cohort_tables", "write_epochs_csv"]


def epoch_columns(stages: Sequence[str]) -> list[str]:
    return [
        "onset_s",
        "true_stage",
        "frozen_stage",
        "adapted_stage",
        *[f"p_{s}" for s in stages],
        "entropy",
        "adapted",
        "gated",
        "flagged",
        "events",
    ]


EPOCH_COLUMNS = epoch_columns(("W", "N1", "N2", "N3", "REM"))


def _event_word(event: dict[str, Any]) -> str:
    return f"{event.get('rail')}:{event.get('kind')}"


def write_epochs_csv(night: StagedNight, path: Path) -> None:
    """Header, then per epoch: onset, stages by name (true empty when unknown), the adapted model's
    probabilities and entropy, adapted/gated as 0/1, the flag reason (empty when fine), events as rail:kind."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(epoch_columns(night.stages))
        for i in range(len(night)):
            truth = night.truth[i]
            writer.writerow(
                [
                    f"{night.onsets[i]:.1f}",
                    night.stages[truth] if truth >= 0 else "",
                    night.stages[night.frozen[i]],
                    night.stages[night.adapted[i]],
                    *[f"{p:.4f}" for p in night.probs[i]],
                    f"{night.entropy[i]:.4f}",
                    int(night.updated[i]),
                    int(night.gated[i]),
                    night.flagged[i] or "",
                    ";".join(_event_word(e) for e in night.events[i]),
                ]
            )


def _counts(night: StagedNight) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for epoch in night.events:
        for event in epoch:
            kinds[_event_word(event)] = kinds.get(_event_word(event), 0) + 1
    return {
        "epochs": len(night),
        "adapted": int(night.updated.sum()),
        "gated": int(night.gated.sum()),
        "flagged": sum(f is not None for f in night.flagged),
        "events": dict(sorted(kinds.items())),
    }


def night_metrics(night: StagedNight) -> dict[str, Any]:
    """Frozen and adapted metrics on the scored epochs, with the run's counts."""
    scored = night.truth >= 0
    out: dict[str, Any] = {"record": night.record_id, **night.info, "median_window": night.median}
    out["scored_epochs"] = int(scored.sum())
    out["frozen"] = report(night.truth[scored], night.frozen[scored], night.stages)
    out["adapted"] = report(night.truth[scored], night.adapted[scored], night.stages)
    out["delta_kappa"] = out["adapted"]["kappa"] - out["frozen"]["kappa"]
    out["run"] = _counts(night)
    return out


def cohort_metrics(nights: Sequence[StagedNight]) -> dict[str, Any]:
    """Per record and pooled (all scored epochs together) metrics, frozen vs adapted."""
    records = [night_metrics(n) for n in nights if n.labelled]
    if not records:
        return {"records": [], "pooled": None}
    truth = np.concatenate([n.truth[n.truth >= 0] for n in nights if n.labelled])
    stages = nights[0].stages
    pooled = {
        "frozen": report(truth, np.concatenate([n.frozen[n.truth >= 0] for n in nights if n.labelled]), stages),
        "adapted": report(truth, np.concatenate([n.adapted[n.truth >= 0] for n in nights if n.labelled]), stages),
    }
    deltas = np.array([r["delta_kappa"] for r in records])
    summary = {
        "records": len(records),
        "mean_kappa": {m: float(np.mean([r[m]["kappa"] for r in records])) for m in ("frozen", "adapted")},
        "worst_kappa": {m: float(np.min([r[m]["kappa"] for r in records])) for m in ("frozen", "adapted")},
        "hurt_fraction": float(np.mean(deltas < -0.02)),
    }
    return {"records": records, "pooled": pooled, "summary": summary}


def write_cohort_tables(cohort: dict[str, Any], out: Path) -> None:
    """``cohort.csv`` and ``cohort.md``: one row per record and a pooled row, frozen vs adapted."""
    header = ["record", "epochs", "frozen_acc", "adapted_acc", "frozen_mf1", "adapted_mf1"]
    header += ["frozen_kappa", "adapted_kappa", "delta_kappa", "adapted_epochs", "gated", "flagged"]
    rows = []
    for r in cohort["records"]:
        f, a = r["frozen"], r["adapted"]
        rows.append(
            [r["record"], r["scored_epochs"], f["accuracy"], a["accuracy"], f["macro_f1"], a["macro_f1"]]
            + [f["kappa"], a["kappa"], r["delta_kappa"], r["run"]["adapted"], r["run"]["gated"], r["run"]["flagged"]]
        )
    if cohort["pooled"]:
        f, a = cohort["pooled"]["frozen"], cohort["pooled"]["adapted"]
        rows.append(
            ["pooled", f["epochs"], f["accuracy"], a["accuracy"], f["macro_f1"], a["macro_f1"]]
            + [f["kappa"], a["kappa"], a["kappa"] - f["kappa"], "", "", ""]
        )

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    with open(out / "cohort.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[fmt(v) for v in row] for row in rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    (out / "cohort.md").write_text("\n".join(lines) + "\n")


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
