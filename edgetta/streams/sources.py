"""Finite sources over arrays: :class:`ArraySource` (in memory) and :class:`NpzSource` (a stream file)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.items import Item, Position
from edgetta.streams.npz import read_npz


def _integer_vector(name: str, values: object, n: int, where: str, meaning: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{where}: '{name}' has shape {arr.shape} but 'x' has {n} rows; give one {meaning} per row")
    if arr.dtype.kind not in "iu":
        raise DataError(
            f"{where}: '{name}' has dtype {arr.dtype}; {meaning}s must be integers "
            f"(convert with {name}.astype(numpy.int64) if the values are whole numbers)"
        )
    return arr


class ArraySource:
    """Rows of ``x`` as items, with optional labels ``y``, segment ids ``domain`` and ``timestamps``.

    Positions are row indices; ``start`` resumes at a row. Checks every array up front and raises a
    :class:`DataError` naming the problem.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        domain: np.ndarray | None = None,
        *,
        name: str = "arrays",
        timestamps: np.ndarray | None = None,
        start: int = 0,
    ) -> None:
        self.name = name
        x = np.asarray(x)
        if x.ndim == 0 or x.dtype.kind not in "biuf":
            raise DataError(
                f"{name}: 'x' must be a numeric array with the batch dimension first, got {x.dtype} of shape {x.shape}"
            )
        n = len(x)
        self.x = x
        self.y = _integer_vector("y", y, n, name, "class label")
        self.domain = _integer_vector("domain", domain, n, name, "segment id")
        self.timestamps = None
        if timestamps is not None:
            ts = np.asarray(timestamps, dtype=np.float64)
            if ts.shape != (n,):
                raise DataError(f"{name}: 'timestamp' has shape {ts.shape} but 'x' has {n} rows")
            self.timestamps = ts
        if not 0 <= start <= n:
            raise DataError(f"{name}: start {start} is outside 0..{n}")
        self.start = start

    @property
    def total(self) -> int:
        return len(self.x) - self.start

    def __len__(self) -> int:
        return self.total

    def position(self, row: int) -> Position:
        return row

    def check_labels(self, num_classes: int) -> None:
        """Raise a :class:`DataError` if a label is not a class index 0..num_classes-1."""
        if self.y is None or not len(self.y):
            return
        bad = np.flatnonzero((self.y < 0) | (self.y >= num_classes))
        if bad.size:
            shown = ", ".join(f"{self.y[i]} at {self.position(int(i))}" for i in bad[:3])
            raise DataError(
                f"{self.name}: {bad.size} label(s) outside 0..{num_classes - 1} ({shown}); labels must be class "
                f"indices of this model ({num_classes} classes)"
            )

    def __iter__(self) -> Iterator[Item]:
        y, domain, ts = self.y, self.domain, self.timestamps
        for i in range(self.start, len(self.x)):
            yield Item(
                self.x[i],
                label=None if y is None else int(y[i]),
                timestamp=time.time() if ts is None else float(ts[i]),
                position=self.position(i),
                domain=None if domain is None else int(domain[i]),
            )

    def close(self) -> None:
        """Nothing to release: the arrays stay usable."""


class NpzSource(ArraySource):
    """A stream file (see :mod:`edgetta.streams.npz`); positions read ``"file.npz:17"``."""

    def __init__(self, path: str | Path, *, start: int = 0, name: str | None = None) -> None:
        self.path = Path(path)
        arrays = read_npz(self.path)
        super().__init__(
            arrays.x,
            arrays.y,
            arrays.domain,
            name=name or str(self.path),
            timestamps=arrays.timestamp,
            start=start,
        )

    def position(self, row: int) -> Position:
        return f"{self.path.name}:{row}"
