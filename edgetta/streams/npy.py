"""A single ``.npy`` array of model inputs (batch dimension first) as a stream, like :class:`NpzSource` without
labels. Positions read ``"file.npy:17"`` (row 17); ``start`` is the first row to yield. The array is memory-mapped,
so a long recording is not read into memory at once; object arrays are refused (no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.items import Position
from edgetta.streams.sources import ArraySource

HOW_TO_SAVE = "save the inputs with numpy.save(path, inputs) (batch dimension first)"


def read_npy(path: str | Path) -> np.ndarray:
    """The array in ``path`` (memory-mapped); a DataError names what is wrong and how to save it instead."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    with path.open("rb") as handle:
        head = handle.read(6)
    if head.startswith(b"PK"):
        raise DataError(f"data file {path} is an NPZ archive, not a single array; use kind: npz for it")
    if head != b"\x93NUMPY":
        raise DataError(f"data file {path} is not a .npy array; {HOW_TO_SAVE}")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise DataError(f"data file {path} holds Python objects or is damaged ({exc}); {HOW_TO_SAVE}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"data file {path} is not a readable .npy array ({exc}); {HOW_TO_SAVE}") from exc
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise DataError(f"data file {path}: expected numeric inputs [N, ...], got {x.dtype} of shape {x.shape}")
    return x


class NpySource(ArraySource):
    """Rows of one ``.npy`` array as items (``live = False``); see the module docstring."""

    live = False
    kind = "npy"

    def __init__(self, path: str | Path, *, start: int = 0, name: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(read_npy(self.path), name=name or str(self.path), start=start)

    def position(self, row: int) -> Position:
        return f"{self.path.name}:{row}"
