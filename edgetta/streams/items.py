"""What flows from a source to the loop: one :class:`Item` per input, and the :class:`Source` protocol.

A source may be finite (a file, arrays) or live (a camera, an amplifier): its iterator may block while
it waits for the next input, may end at any time, and may yield bad items. A bad item is still an
item: either its ``x`` does not fit the model (wrong shape, NaN; the adapter refuses it) or the
source could not read it at all (``error`` set, ``x`` None). The loop turns every item it consumes
into exactly one record, so nothing is ever dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

Position = int | str


@dataclass
class Item:
    """One model input without a batch dimension, with what is known about it.

    ``position`` locates the item in its source (an index, or ``"file.npz:17"``) so that a source can
    be resumed from it later; ``domain`` is a segment id (batches never mix two domains). ``flag`` is the
    reason a signal-quality check distrusts the input (a flat line, clipping): the loop passes it to
    ``Adapter.process(x, flags=...)``, whose ``signal_quality`` rail keeps the row out of adaptation.
    """

    x: np.ndarray | None
    label: int | None = None
    timestamp: float = field(default_factory=time.time)
    position: Position = 0
    domain: int | None = None
    error: str | None = None  # the source could not read this input; x is None
    flag: str | None = None  # signal-quality reason: predicted, but kept out of adaptation (Adapter flags)


@runtime_checkable
class Source(Protocol):
    """A stream of :class:`Item`. Optional extras the loop uses when present: ``total`` (number of
    items, None when unknown or live) and ``check_labels(num_classes)`` (raise before the first item
    if a label cannot belong to the model)."""

    name: str

    def __iter__(self) -> Iterator[Item]: ...

    def close(self) -> None: ...
