"""The one loop from a source to sinks: batch items, adapt, record every item, summarise.

:func:`run_stream` groups consecutive items into batches of ``batch_size`` that never mix two
domains, resets the adapter when the domain changes (``episodic``), calls ``adapter.process`` on each
batch and turns every consumed item into exactly one :class:`Record`: a prediction or a skip reason.
Items that cannot be stacked with the rest of their batch (another shape or dtype) are passed to
the adapter in their own group, which refuses them with a reason; items the source could not read
become skip records without reaching the adapter.

:class:`StreamRunner` is that loop as an object (``feed`` items, ``flush`` a partial batch, ``state`` at a
batch boundary): ``run_stream`` drives it over a finite source, the daemon (``edgetta run``) over live and
recorded streams it checkpoints and resumes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.items import Item, Source
from edgetta.streams.progress import Progress
from edgetta.streams.records import GATE_KINDS, EventLike, Record, Summary
from edgetta.streams.sinks import Sink

COUNTERS = ("updates", "forward_passes", "backward_passes")
GATED_FIELDS = ("dropped", "unreliable", "redundant")
OTHER_REASONS = "other reasons"


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


class StreamRunner:
    """The loop's incremental core, shared by :func:`run_stream` and the daemon: :meth:`feed` items, get the
    records of every batch that filled; :meth:`flush` processes a partial batch (end of a stream, or a live
    source that went quiet). Records and events also go to each sink, events of a batch before its records.

    Batches hold ``batch_size`` consecutive items of one domain; a domain change flushes the batch and, when
    ``episodic``, resets the adapter before the new domain's first batch. ``max_skip_reasons`` bounds the distinct
    skip reasons counted apart (a long-running stream whose reasons name frame numbers stays small).
    :meth:`state`/:meth:`load_state` carry everything that decides future batches and record indices (JSON), so
    a stream resumed after its last record batches exactly like an uninterrupted one.
    """

    def __init__(
        self,
        adapter: Any,
        sinks: Sequence[Sink] = (),
        *,
        batch_size: int | None = None,
        episodic: bool = False,
        progress: Progress | None = None,
        max_skip_reasons: int | None = None,
    ) -> None:
        size = int(batch_size or adapter.config.batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        self.adapter, self.sinks, self.progress = adapter, list(sinks), progress
        self.batch_size, self.episodic = size, episodic
        self.max_skip_reasons = max_skip_reasons  # distinct reasons counted apart; the rest under OTHER_REASONS
        self.num_classes = int(adapter.artifact.num_classes)
        self.class_names: list[str] = list(adapter.artifact.class_names or [])
        self.pending: list[Item] = []
        self.index = 0  # index of the next record
        self.domain: int | None = None  # domain of the last batch processed
        self.seen = False  # whether a batch was processed (a first batch is never a domain change)
        self.correct = self.labelled = self.processed = 0
        self.skips: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.gated = 0
        self.before = _counters(adapter)
        self.started = time.perf_counter()

    # -- feeding -------------------------------------------------------------------------------------------
    def feed(self, items: Iterable[Item]) -> list[Record]:
        """Queue ``items``; returns the records of the batches they completed (in order)."""
        out: list[Record] = []
        for item in items:
            _check_label(item, self.num_classes)
            if self.pending and item.domain != self.pending[-1].domain:
                out.extend(self.flush())
            self.pending.append(item)
            if len(self.pending) >= self.batch_size:
                out.extend(self.flush())
        return out

    def flush(self) -> list[Record]:
        """Process the partial batch, if any; returns its records. A batch of a new domain resets the adapter
        first when ``episodic``."""
        if not self.pending:
            return []
        items, self.pending = self.pending, []
        domain = items[0].domain
        if self.seen and domain != self.domain and self.episodic:
            self.emit_event(self.adapter.reset(f"domain changed to {domain}"))
        self.domain, self.seen = domain, True
        return self._process(items)

    def _count_skip(self, reason: str) -> None:
        if self.max_skip_reasons is not None and reason not in self.skips and len(self.skips) >= self.max_skip_reasons:
            reason = OTHER_REASONS
        self.skips[reason] += 1

    def emit_event(self, event: EventLike) -> None:
        self.events[event.kind] += 1
        if event.kind == "gate":
            data = event.to_json()
            self.gated += sum(int(data.get(k, 0)) for k in GATED_FIELDS)
        for sink in self.sinks:
            sink.write_event(event)

    def _process(self, items: list[Item]) -> list[Record]:
        records = [Record(self.index + i, it.position, it.timestamp, it.domain, it.label) for i, it in enumerate(items)]
        groups, unreadable = _stack_groups(items)
        for i, reason in unreadable.items():
            records[i].skip = reason
        for rows in groups.values():
            x = np.stack([items[i].x for i in rows])
            flags = [items[i].flag for i in rows]
            result = self.adapter.process(x, flags=flags) if any(flags) else self.adapter.process(x)
            for event in result.events:
                self.emit_event(event)
            names = [f"{e.to_json().get('rail', '')}:{e.kind}" for e in result.events]
            gated = any(e.kind in GATE_KINDS and e.to_json().get("rail") != "runtime" for e in result.events)
            excluded = getattr(result, "excluded", None)
            for j, i in enumerate(rows):
                rec = records[i]
                rec.flag, rec.events, rec.gated = items[i].flag, names, gated
                rec.excluded = bool(excluded is not None and excluded[j])
                rec.adapted = bool(getattr(result, "updated", False)) and not rec.excluded
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
                self._count_skip(rec.skip)
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
        return records

    # -- results and resumption ----------------------------------------------------------------------------
    def summary(self) -> Summary:
        """Counts since this runner was created (adapter counters: their change since then)."""
        seconds = time.perf_counter() - self.started
        after = _counters(self.adapter)
        return Summary(
            method=method_name(self.adapter),
            samples=self.index,
            processed=self.processed,
            skipped=sum(self.skips.values()),
            skip_reasons=dict(self.skips.most_common()),
            accuracy=self.correct / self.labelled if self.labelled else None,
            labelled=self.labelled,
            updates=after["updates"] - self.before["updates"],
            forward_passes=after["forward_passes"] - self.before["forward_passes"],
            backward_passes=after["backward_passes"] - self.before["backward_passes"],
            gated_samples=self.gated,
            resets=after["resets"] - self.before["resets"],
            events=dict(sorted(self.events.items())),
            seconds=seconds,
            samples_per_second=self.index / seconds if seconds > 0 else None,
        )

    def state(self) -> dict[str, Any]:
        """JSON state after the last processed batch. Pending items are not part of it (nothing of them has
        reached the adapter or a sink yet): a resumed source yields them again after the last record."""
        return {
            "index": self.index,
            "domain": self.domain,
            "seen": self.seen,
            "processed": self.processed,
            "correct": self.correct,
            "labelled": self.labelled,
            "gated": self.gated,
            "skips": dict(self.skips),
            "events": dict(self.events),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue after the batch boundary :meth:`state` described (the adapter is restored separately)."""
        self.pending = []
        self.index = int(state["index"])
        self.domain, self.seen = state["domain"], bool(state["seen"])
        self.processed, self.correct = int(state["processed"]), int(state["correct"])
        self.labelled, self.gated = int(state["labelled"]), int(state["gated"])
        self.skips = Counter({str(k): int(v) for k, v in state["skips"].items()})
        self.events = Counter({str(k): int(v) for k, v in state["events"].items()})
        self.before = _counters(self.adapter)


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
    runner = StreamRunner(adapter, sinks, batch_size=batch_size, episodic=episodic, progress=progress)
    check_labels = getattr(source, "check_labels", None)
    if check_labels is not None:
        check_labels(runner.num_classes)
    for item in source:
        runner.feed((item,))
    runner.flush()
    return runner.summary()
