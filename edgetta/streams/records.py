"""What the loop hands to sinks: one :class:`Record` per consumed item, and the run's :class:`Summary`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from edgetta.streams.items import Position

RECORD_FIELDS: tuple[str, ...] = (
    "index",
    "position",
    "timestamp",
    "domain",
    "label",
    "pred",
    "class",
    "entropy",
    "skip",
)
# per-record adaptation outcome, written by outputs that ask for it (a stream with signal-quality flags)
ADAPTATION_FIELDS: tuple[str, ...] = ("flagged", "excluded", "adapted", "gated", "events")
GATE_KINDS = ("skip", "gate")  # event kinds of a rail that paused an update


class EventLike(Protocol):
    """A rail or runtime event (:class:`edgetta.safety.base.Event`): a kind and a JSON form."""

    kind: str

    def to_json(self) -> dict[str, Any]: ...


@dataclass
class Record:
    """The outcome for one item: a prediction, or the reason it was skipped (``pred`` None)."""

    index: int  # order in which the loop consumed the item (0, 1, 2, ...)
    position: Position  # where the item came from in its source
    timestamp: float
    domain: int | None
    label: int | None
    pred: int | None = None
    class_name: str | None = None
    entropy: float | None = None
    skip: str | None = None
    logits: np.ndarray | None = field(default=None, repr=False)
    flag: str | None = None  # the item's signal-quality reason (None: fine)
    excluded: bool = False  # a screening rail kept it out of adaptation
    adapted: bool = False  # the call it was in updated the model, and it was not excluded
    gated: bool = False  # a rail's gate paused the update of the call it was in
    events: list[str] = field(default_factory=list)  # the events of its call, as "rail:kind"

    @property
    def correct(self) -> bool | None:
        """Whether the prediction matches the label; None without a label, False when skipped."""
        if self.label is None:
            return None
        return self.pred == self.label

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "position": self.position,
            "timestamp": self.timestamp,
            "domain": self.domain,
            "label": self.label,
            "pred": self.pred,
            "class": self.class_name,
            "entropy": None if self.entropy is None else round(self.entropy, 6),
            "skip": self.skip,
        }

    def adaptation_json(self) -> dict[str, Any]:
        """The :data:`ADAPTATION_FIELDS` (what happened to the model on this record's call)."""
        return {
            "flagged": self.flag,
            "excluded": self.excluded,
            "adapted": self.adapted,
            "gated": self.gated,
            "events": list(self.events),
        }


@dataclass
class Summary:
    """Counts of one run of the loop (adapter counters are the change during this run)."""

    method: str
    samples: int = 0
    processed: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)  # most common first
    accuracy: float | None = None
    labelled: int = 0
    updates: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    gated_samples: int = 0
    resets: int = 0
    events: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples_per_second: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        if self.samples_per_second is not None:
            out["samples_per_second"] = round(self.samples_per_second, 1)
        return out
