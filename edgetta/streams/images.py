"""A directory of image files, in name order, optionally watched for new files (a live folder).

Positions are file names (relative to the folder). Files are taken in plain string order of their names
(zero-pad numbers: ``frame_0009.png`` before ``frame_0010.png``); hidden files and other extensions are
ignored. ``start`` is the name of the first file to yield (files whose names sort before it are skipped)
or its index in the sorted listing; ``after`` is the name of the last file already processed. A file
OpenCV cannot decode (or that vanished) is an ``Item(x=None, error=...)`` and the stream goes on.

With ``watch`` (``live = True``) the folder is listed again every ``poll`` seconds after the files present at
the start, and new files are yielded in name order once their size has stayed the same for one poll (a
file still being written is not read half-way; writing to a temporary name and renaming avoids the wait).
After a restart with ``after=`` a watched folder skips every name that sorts at or before ``after``, so new
files must get names that sort after the old ones (timestamps); items in flight at a crash are read again
only if their names sort after the last committed one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.extras import need
from edgetta.streams.items import Item
from edgetta.streams.preprocess.base import Unusable

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm")


class ImageFolderSource:
    """Image files of ``path`` as model inputs (see the module docstring)."""

    kind = "images"

    def __init__(
        self,
        path: str | Path,
        preprocess: Callable[[np.ndarray], np.ndarray],
        *,
        start: str | int | None = None,
        after: str | None = None,
        watch: bool = False,
        poll: float = 1.0,
        extensions: Sequence[str] = EXTENSIONS,
        name: str | None = None,
    ) -> None:
        self.cv2 = need("cv2", "image folder sources")
        self.path = Path(path)
        if not self.path.is_dir():
            state = "is a file" if self.path.exists() else "does not exist"
            raise DataError(f"image folder {self.path} {state}; give a directory of image files")
        if start is not None and after is not None:
            raise ValueError("give start (first file to yield) or after (last file done), not both")
        self.preprocess = preprocess
        self.preprocessor = preprocess
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.watch, self.poll = bool(watch), float(poll)
        self.live = self.watch
        self.name = name or str(self.path)
        self._initial = self.listing()
        self._floor, self._inclusive = self._threshold(start, after)
        self._stop = threading.Event()

    def _threshold(self, start: str | int | None, after: str | None) -> tuple[str | None, bool]:
        """The first name to take (inclusive) or the last one done (exclusive)."""
        if after is not None:
            return str(after), False
        if isinstance(start, int) and not isinstance(start, bool):
            if not 0 <= start <= len(self._initial):
                raise DataError(f"{self.path}: start index {start} is outside 0..{len(self._initial)}")
            if start < len(self._initial):
                return self._initial[start], True
            return (self._initial[-1], False) if self._initial else (None, True)
        return (None if start is None else str(start)), True

    def _wanted(self, name: str) -> bool:
        if self._floor is None:
            return True
        return name >= self._floor if self._inclusive else name > self._floor

    def listing(self) -> list[str]:
        """Image file names in the folder now, sorted."""
        try:
            entries = list(self.path.iterdir())
        except OSError as exc:
            raise DataError(f"cannot list image folder {self.path}: {exc.strerror or exc}") from exc
        return sorted(
            p.name
            for p in entries
            if not p.name.startswith(".") and p.suffix.lower() in self.extensions and p.is_file()
        )

    @property
    def total(self) -> int | None:
        """Files to yield (None for a watched folder)."""
        return None if self.watch else sum(self._wanted(n) for n in self._initial)

    def _item(self, name: str) -> Item:
        try:
            raw = np.fromfile(self.path / name, dtype=np.uint8)
        except OSError as exc:
            return Item(None, position=name, error=f"{name}: could not be read ({exc.strerror or exc})")
        image = self.cv2.imdecode(raw, self.cv2.IMREAD_COLOR) if raw.size else None
        if image is None:
            return Item(None, position=name, error=f"{name}: not an image OpenCV can decode (corrupt or truncated?)")
        try:
            return Item(self.preprocess(image), position=name)
        except Unusable as exc:
            return Item(None, position=name, error=f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the stream
            return Item(None, position=name, error=f"{name}: could not be preprocessed ({exc})")

    def __iter__(self) -> Iterator[Item]:
        seen: set[str] = set()
        for name in self._initial:
            if self._stop.is_set():
                return
            seen.add(name)
            if self._wanted(name):
                yield self._item(name)
        if not self.watch:
            return
        sizes: dict[str, int] = {}
        while not self._stop.wait(self.poll):
            ready = []
            for name in self.listing():
                if name in seen or not self._wanted(name):
                    continue
                try:
                    size = (self.path / name).stat().st_size
                except OSError:
                    continue
                if size > 0 and sizes.get(name) == size:
                    ready.append(name)
                else:
                    sizes[name] = size
            for name in ready:
                if self._stop.is_set():
                    return
                seen.add(name)
                sizes.pop(name, None)
                yield self._item(name)

    def close(self) -> None:
        """End the iteration (a watched folder stops polling)."""
        self._stop.set()
