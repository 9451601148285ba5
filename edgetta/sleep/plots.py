"""Hypnogram and cohort plots (matplotlib, optional: ``pip install 'edgetta[plot]'``). Each function returns
None when it wrote the file, else a one-line message saying why it skipped."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.sleep.pipeline import StagedNight

# Conventional hypnogram order top to bottom: W, REM, N1, N2, N3.
_DISPLAY = {"W": 0, "REM": 1, "N1": 2, "N2": 3, "N3": 4}


def _pyplot() -> Any | None:
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MISSING = "matplotlib is not installed: skipped {what} (pip install 'edgetta[plot]')"


def _levels(stages: Sequence[str], seq: np.ndarray) -> np.ndarray:
    order = [_DISPLAY.get(s, i) for i, s in enumerate(stages)]
    return np.array([order[s] if s >= 0 else np.nan for s in seq], dtype=float)


def plot_hypnogram(night: StagedNight, path: Path) -> str | None:
    """True (when known), frozen and adapted hypnograms; flagged epochs marked on the adapted row."""
    plt = _pyplot()
    if plt is None:
        return MISSING.format(what=path.name)
    hours = night.onsets / 3600.0
    rows = [("true", night.truth)] if night.labelled else []
    rows += [("frozen", night.frozen), ("adapted", night.adapted)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.6 * len(rows) + 0.6), sharex=True, squeeze=False)
    ticks = sorted(_DISPLAY, key=_DISPLAY.get)
    for ax, (name, seq) in zip(axes[:, 0], rows, strict=True):
        ax.step(hours, _levels(night.stages, seq), where="post", lw=0.8, color="k")
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set_ylim(len(ticks) - 0.5, -0.5)
        ax.set_ylabel(name)
        if name == "adapted":
            bad = np.array([f is not None for f in night.flagged])
            if bad.any():
                ax.plot(hours[bad], np.full(bad.sum(), -0.3), "|", color="tab:red", label="flagged")
                ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("hours from the first kept epoch")
    fig.suptitle(f"{night.record_id or 'night'} ({night.info.get('recipe', '')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_cohort(cohort: dict[str, Any], path: Path) -> str | None:
    """Per-record Cohen's kappa, frozen vs adapted (points above the diagonal: adaptation helped)."""
    plt = _pyplot()
    if plt is None:
        return MISSING.format(what=path.name)
    records = cohort["records"]
    f = np.array([r["frozen"]["kappa"] for r in records])
    a = np.array([r["adapted"]["kappa"] for r in records])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    low = float(min(f.min(), a.min(), 0.0)) if len(f) else 0.0
    ax.plot([low, 1], [low, 1], color="0.6", lw=0.8)
    ax.scatter(f, a, s=18)
    for r, x, y in zip(records, f, a, strict=True):
        ax.annotate(str(r["record"])[:10], (x, y), fontsize=6)
    ax.set_xlabel("frozen kappa")
    ax.set_ylabel("adapted kappa")
    ax.set_title("per-record Cohen's kappa", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
