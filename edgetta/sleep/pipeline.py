"""Stage one night, epoch by epoch, frozen and adapted side by side, as a bedside monitor would.

For each 30 s epoch, in time order (nothing looks ahead):

1. signal quality (``edgetta.sleep.quality.epoch_quality``, on the raw microvolts): a flagged epoch is still
   staged, but neither updates the running z-score nor adapts the model (``flags`` to the Adapter, whose
   ``signal_quality`` rail keeps it out of every update and statistics estimate);
2. the per-record causal running z-score (``edgetta.sleep.normalize``);
3. the frozen source model and the adapted model (the configured recipe, default ``stablesleep``) at batch
   size 1, one call per epoch (the Adapter windows small calls itself when its method needs a batch);
4. optionally a causal median filter of both stage sequences (``edgetta.sleep.smoothing``).

A new record starts with a hard reset of the adapted model (an event in its first epoch). Every rail and
runtime decision is kept per epoch: updated, gated (an entropy gate paused the update), flagged, events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import RuntimeConfig, load_config
from edgetta.sleep.normalize import DEFAULT_MOMENTUM, zscore_record
from edgetta.sleep.smoothing import causal_median

__all__ = ["DEFAULT_ARTIFACT", "DEFAULT_PRESET", "StagedNight", "make_adapters", "stage_night"]

DEFAULT_ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "sleep_tinysleepnet"
DEFAULT_PRESET = "stablesleep"
GATE_KINDS = ("skip", "gate")


@dataclass
class StagedNight:
    """Per kept epoch: onset (s), true stage (-1 unknown), frozen and adapted stages, the adapted model's
    probabilities and entropy, whether it updated, was gated or flagged, and its events (JSON dicts)."""

    record_id: str
    stages: tuple[str, ...]
    onsets: np.ndarray
    truth: np.ndarray
    frozen: np.ndarray
    adapted: np.ndarray
    probs: np.ndarray
    entropy: np.ndarray
    frozen_probs: np.ndarray
    updated: np.ndarray
    gated: np.ndarray
    flagged: list[str | None]
    events: list[list[dict[str, Any]]]
    median: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    latency: np.ndarray = field(default_factory=lambda: np.zeros(0))  # s per adapted call (batch 1, with its update)

    @property
    def labelled(self) -> bool:
        return bool(np.any(self.truth >= 0))

    def __len__(self) -> int:
        return len(self.onsets)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def make_adapters(artifact: str | Path | None = None, config: RuntimeConfig | None = None) -> tuple[Adapter, Adapter]:
    """The frozen and the adapted Adapter for ``artifact`` (default: the bundled synthetic-trained network),
    sharing one engine; ``config`` defaults to the ``stablesleep`` preset."""
    config = config or load_config(preset=DEFAULT_PRESET)
    adapted = Adapter(artifact or DEFAULT_ARTIFACT, config)
    frozen = Adapter(adapted.artifact, load_config(preset="frozen"), engine=adapted.engine)
    return frozen, adapted


def _quality(eeg: np.ndarray, rate: float, check: bool) -> list[str | None]:
    if not check:
        return [None] * len(eeg)
    from edgetta.sleep.quality import epoch_quality

    report = epoch_quality(eeg, rate)
    return [None if ok else (reason or "bad signal") for ok, reason in zip(report.ok, report.reasons, strict=True)]


def stage_night(
    eeg: np.ndarray,
    adapters: tuple[Adapter, Adapter],
    *,
    labels: np.ndarray | None = None,
    onsets: np.ndarray | None = None,
    rate: float = 100.0,
    record_id: str = "",
    quality: bool = True,
    median: int = 1,
    zscore_momentum: float = DEFAULT_MOMENTUM,
) -> StagedNight:
    """Stage the epochs ``eeg`` [n, T] (microvolts, time order) of one record with ``adapters`` (frozen,
    adapted); the adapted one is reset to its source state first (a new record)."""
    frozen, adapter = adapters
    eeg = np.asarray(eeg)
    n = len(eeg)
    if eeg.ndim != 2:
        raise ValueError(f"eeg must be [epochs, samples], got shape {eeg.shape}")
    flags = _quality(eeg, rate, quality)
    x = zscore_record(eeg, zscore_momentum, skip=np.array([f is not None for f in flags], bool))[:, None, :]
    stages = tuple(adapter.artifact.class_names)
    k = len(stages)

    chunks = [frozen.process(x[i : i + 256]).logits for i in range(0, n, 256)]
    frozen_logits = np.concatenate(chunks) if chunks else np.zeros((0, k), np.float32)
    reset = adapter.reset(f"new record {record_id}".strip()).to_json()
    logits = np.zeros((n, k), np.float32)
    updated, gated = np.zeros(n, bool), np.zeros(n, bool)
    events: list[list[dict[str, Any]]] = []
    latency = np.zeros(n)
    for i in range(n):
        started = time.perf_counter()
        result = adapter.process(x[i : i + 1], flags=[flags[i]])
        latency[i] = time.perf_counter() - started
        logits[i] = result.logits[0]
        updated[i] = result.updated
        epoch_events = [e.to_json() for e in result.events]
        if i == 0:
            epoch_events.insert(0, reset)
        gated[i] = any(e.kind in GATE_KINDS and e.rail != "runtime" for e in result.events)
        events.append(epoch_events)
    probs, frozen_probs = _softmax(logits), _softmax(frozen_logits)
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=1)
    adapted_stage, frozen_stage = probs.argmax(1), frozen_probs.argmax(1)
    if median > 1:
        adapted_stage, frozen_stage = causal_median(adapted_stage, median), causal_median(frozen_stage, median)
    truth = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    return StagedNight(
        record_id=record_id,
        stages=stages,
        onsets=np.arange(n) * eeg.shape[1] / rate if onsets is None else np.asarray(onsets, np.float64),
        truth=truth,
        frozen=frozen_stage.astype(np.int64),
        adapted=adapted_stage.astype(np.int64),
        probs=probs.astype(np.float32),
        entropy=entropy.astype(np.float32),
        frozen_probs=frozen_probs.astype(np.float32),
        updated=updated,
        gated=gated,
        flagged=flags,
        events=events,
        median=median,
        info={"recipe": adapter.config.name, "artifact": adapter.artifact.path.name},
        latency=latency,
    )
