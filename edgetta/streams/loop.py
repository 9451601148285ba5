"""The one loop from a source to sinks: batch items, adapt, record every item, summarise.

:func:`run_stream` groups consecutive items into batches of ``batch_size`` that never mix two
domains, resets the adapter when the domain changes (``episodic``), calls ``adapter.process`` on each
batch and turns every consumed item into exactly one :class:`Record`: a prediction or a skip reason.
Items that cannot be stacked with the rest of their batch (another shape or dtype) are passed to
the adapter in their own group, which refuses them with a reason; items the source could not read
become skip records without reaching the adapter.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.items import Item, Source
from edgetta.streams.progress import Progress
from edgetta.streams.records import EventLike, Record, Summary
from edgetta.streams.sinks import Sink

COUNTERS = ("updates", "forward_passes", "backward_passes")
GATED_FIELDS = ("dropped", "unreliable", "redundant")


def method_name(adapter: Any) -> str:
    """The preset or recipe name the user chose (``config.name``), else the method."""
    return getattr(adapter.config, "name", None) or adapter.config.method


def _check_label(item: Item, num_classes: int) -> None:
    label = item.label
    if label is None:
        return
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise DataError(f"label {label!r} at {item.position} is not an integer class index")
    if not 0 <= label < num_classes:
        raise DataError(
            f"label {label} at {item.position} is outside 0..{num_classes - 1}; labels must be class indices "
            f"of this model ({num_classes} classes)"
        )


def _stack_groups(items: Sequence[Item]) -> tuple[dict[tuple, list[int]], dict[int, str]]:
    """Row groups that stack (same shape and dtype), in first-seen order, and skip reasons of unreadable rows."""
    groups: dict[tuple, list[int]] = {}
    unreadable: dict[int, str] = {}
    for i, item in enumerate(items):
        if item.error is not None or item.x is None:
            unreadable[i] = item.error or "the source gave no input"
            continue
        x = np.asarray(item.x)
        if x.dtype.kind not in "biuf":
            unreadable[i] = f"input of dtype {x.dtype} is not numeric"
            continue
        groups.setdefault((x.shape, x.dtype.str), []).append(i)
    return groups, unreadable


class _Run:
    """State of one :func:`run_stream` call."""

    def __init__(self, adapter: Any, sinks: Sequence[Sink], progress: Progress | None) -> None:
        self.adapter, self.sinks, self.progress = adapter, sinks, progress
        self.class_names: list[str] = list(adapter.artifact.class_names or [])
        self.index = 0
        self.correct = self.labelled = self.processed = 0
        self.skips: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.gated = 0

    def emit_event(self, event: EventLike) -> None:
        self.events[event.kind] += 1
        if event.kind == "gate":
            data = event.to_json()
            self.gated += sum(int(data.get(k, 0)) for k in GATED_FIELDS)
        for sink in self.sinks:
            sink.write_event(event)

    def flush(self, items: list[Item]) -> None:
        records = [Record(self.index + i, it.position, it.timestamp, it.domain, it.label) for i, it in enumerate(items)]
        groups, unreadable = _stack_groups(items)
        for i, reason in unreadable.items():
            records[i].skip = reason
        for rows in groups.values():
            result = self.adapter.process(np.stack([items[i].x for i in rows]))
            for event in result.events:
                self.emit_event(event)
            for j, i in enumerate(rows):
                rec = records[i]
                if result.skipped[j] is not None:
                    rec.skip = result.skipped[j]
                    continue
                rec.pred = int(result.preds[j])
                rec.entropy = float(result.entropy[j])
                rec.logits = result.logits[j]
                if 0 <= rec.pred < len(self.class_names):
                    rec.class_name = self.class_names[rec.pred]
        for rec in records:
            if rec.skip is not None:
                self.skips[rec.skip] += 1
            else:
                self.processed += 1
                if rec.label is not None:
                    self.labelled += 1
                    self.correct += int(rec.pred == rec.label)
            for sink in self.sinks:
                sink.write(rec)
        self.index += len(items)
        if self.progress is not None:
            self.progress.advance(len(items), f"acc {self.correct / self.labelled:.3f}" if self.labelled else "")


def _counters(adapter: Any) -> dict[str, int]:
    out = {k: int(adapter.totals.get(k, 0)) for k in COUNTERS}
    out["resets"] = int(adapter.state.reset_count)
    return out


def run_stream(
    adapter: Any,
    source: Source,
    sinks: Sequence[Sink] = (),
    *,
    batch_size: int | None = None,
    episodic: bool = False,
    progress: Progress | None = None,
) -> Summary:
    """Run every item of ``source`` through ``adapter`` (an :class:`edgetta.runtime.adapter.Adapter`)
    and hand one record per item and every event to each sink. Neither the source nor the sinks are
    closed. Raises :class:`DataError` for a label that cannot belong to the model."""
    size = int(batch_size or adapter.config.batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    num_classes = int(adapter.artifact.num_classes)
    check_labels = getattr(source, "check_labels", None)
    if check_labels is not None:
        check_labels(num_classes)
    before = _counters(adapter)
    run = _Run(adapter, sinks, progress)
    started = time.perf_counter()
    pending: list[Item] = []
    previous: Item | None = None
    for item in source:
        _check_label(item, num_classes)
        if previous is not None and item.domain != previous.domain:
            if pending:
                run.flush(pending)
                pending = []
            if episodic:
                run.emit_event(adapter.reset(f"domain changed to {item.domain}"))
        pending.append(item)
        previous = item
        if len(pending) >= size:
            run.flush(pending)
            pending = []
    if pending:
        run.flush(pending)
    seconds = time.perf_counter() - started
    after = _counters(adapter)
    return Summary(
        method=method_name(adapter),
        samples=run.index,
        processed=run.processed,
        skipped=sum(run.skips.values()),
        skip_reasons=dict(run.skips.most_common()),
        accuracy=run.correct / run.labelled if run.labelled else None,
        labelled=run.labelled,
        updates=after["updates"] - before["updates"],
        forward_passes=after["forward_passes"] - before["forward_passes"],
        backward_passes=after["backward_passes"] - before["backward_passes"],
        gated_samples=run.gated,
        resets=after["resets"] - before["resets"],
        events=dict(sorted(run.events.items())),
        seconds=seconds,
        samples_per_second=run.index / seconds if seconds > 0 else None,
    )
