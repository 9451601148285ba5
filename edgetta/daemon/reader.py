"""A stream's reader thread and the bounded queue between it and the model.

The reader opens the source and puts ``(item, read_time)`` entries into an :class:`ItemQueue`; the end of
the source is an :data:`END` entry and a source that fails is a :class:`Failure` entry, so the consumer
sees every outcome in order. When the queue is full, a live source's oldest item is dropped (counted); a
recorded source waits, so it never loses an item.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetta.streams.items import Item

END = "end"


@dataclass(frozen=True)
class Failure:
    """The source failed for good (it raised while reading)."""

    reason: str


Entry = Any  # tuple[Item, float] | END | Failure


class ItemQueue:
    """A bounded FIFO. ``drop_oldest``: a full queue drops its oldest item to make room (returned by
    :meth:`put`); otherwise :meth:`put` waits for room (or for ``stop``). ``wake`` is set on every put."""

    def __init__(self, size: int, wake: threading.Event) -> None:
        self.size = size
        self.drop_oldest = False
        self.wake = wake
        self._items: deque[Entry] = deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, entry: Entry, stop: threading.Event, *, force: bool = False) -> int:
        """Add ``entry``; returns how many old items were dropped to make room. ``force``: never wait
        (end-of-stream markers)."""
        dropped = 0
        with self._cond:
            while not force and len(self._items) >= self.size:
                if self.drop_oldest:
                    self._items.popleft()
                    dropped += 1
                    continue
                if stop.is_set():
                    return 0
                self._cond.wait(0.1)
            self._items.append(entry)
        self.wake.set()
        return dropped

    def take(self, n: int) -> list[Entry]:
        """Up to ``n`` entries, without waiting."""
        out: list[Entry] = []
        with self._cond:
            while self._items and len(out) < n:
                out.append(self._items.popleft())
            if out:
                self._cond.notify_all()
        return out


def clean_label(item: Item, num_classes: int) -> bool:
    """Keep a label only if it is a class index of the model; returns False when one was removed."""
    label = item.label
    if label is None:
        return True
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < num_classes:
        return True
    item.label = None
    return False


class Reader:
    """The thread that reads one opened source into its queue; ``max_items`` ends the stream after that
    many items. :meth:`stop` ends it early (the source's ``close()`` cuts a blocking read short)."""

    def __init__(
        self,
        name: str,
        source: Any,
        queue: ItemQueue,
        *,
        num_classes: int,
        on_drop: Callable[[int], None],
        max_items: int | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.queue = queue
        self.num_classes = num_classes
        self.on_drop = on_drop
        self.max_items = max_items
        self.stopped = threading.Event()
        self.read = 0
        self.bad_labels = 0
        self.thread = threading.Thread(target=self._run, name=f"edgetta-read-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        _close(self.source)

    def _run(self) -> None:
        try:
            if self.max_items == 0:
                self._finish(END)
                return
            for item in self.source:
                if self.stopped.is_set():
                    return
                if not clean_label(item, self.num_classes):
                    self.bad_labels += 1
                dropped = self.queue.put((item, time.monotonic()), self.stopped)
                if dropped:
                    self.on_drop(dropped)
                self.read += 1
                if self.max_items is not None and self.read >= self.max_items:
                    break
        except Exception as exc:  # the source broke for good (its own retries, if any, are spent)
            self._finish(Failure(_describe(exc)))
            return
        finally:
            _close(self.source)
        if not self.stopped.is_set():
            self._finish(END)

    def _finish(self, entry: Entry) -> None:
        self.queue.put(entry, self.stopped, force=True)


def _close(source: Any) -> None:
    try:
        source.close()
    except Exception:  # closing a broken device must not hide why it broke
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."
