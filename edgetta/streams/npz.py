"""The NPZ stream format, read and written in one place.

A stream file is ``numpy.savez(path, x=inputs, y=labels, domain=segment_ids)``; only ``x`` is
required. ``x`` holds model inputs with the batch dimension first, ``y`` integer class indices,
``domain`` integer segment ids, ``timestamp`` optional float seconds. The compact form stores uint8
images ``pixels`` [N, H, W] (or [N, C, H, W]) with scalars ``pixel_mean`` and ``pixel_std`` instead of
``x``; the reader recomputes ``x = (pixels / 255 - pixel_mean) / pixel_std`` (channel axis added for
[N, H, W]) bit for bit as the builders in :mod:`edgetta.data.streams` made it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetta.errors import DataError

HOW_TO_SAVE = "save the stream with numpy.savez(path, x=inputs, y=labels, domain=segment_ids) (y, domain optional)"
PIXEL_KEYS = ("pixels", "pixel_mean", "pixel_std")


@dataclass
class StreamArrays:
    """The arrays of one stream file, not yet checked against each other (see :class:`ArraySource`)."""

    x: np.ndarray
    y: np.ndarray | None = None
    domain: np.ndarray | None = None
    timestamp: np.ndarray | None = None


def pixels_to_inputs(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """float32 model inputs from uint8 images: ``(pixels / 255 - mean) / std``, channel axis added to [N, H, W]."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)
    return x[:, None] if x.ndim == 3 else x


def _not_npz(path: Path) -> str | None:
    """Why ``path`` cannot be an NPZ stream file, or None when it looks like one (a zip archive)."""
    if not path.exists():
        return f"data file {path} does not exist"
    if path.is_dir():
        return f"data path {path} is a directory; give the .npz file itself"
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK"):
        return None
    if head.startswith(b"\x93NUMPY"):
        return (
            f"data file {path} holds a single array (.npy), not an NPZ stream; "
            f"{HOW_TO_SAVE}, e.g. numpy.savez('{path.with_suffix('.npz').name}', x=numpy.load('{path.name}'))"
        )
    try:
        head.decode("utf-8")
        kind = "a text file (YAML, CSV, JSON?)"
    except UnicodeDecodeError:
        kind = "not a NumPy file"
    return f"data file {path} is {kind}, not an NPZ stream; {HOW_TO_SAVE}"


def _array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return data[key]
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise DataError(f"data file {path}: array {key!r} holds Python objects; store numeric arrays ({exc})") from exc


def _scalar(data: np.lib.npyio.NpzFile, key: str, path: Path) -> float:
    value = _array(data, key, path)
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise DataError(f"data file {path}: {key!r} must be one number, got {value.dtype} of shape {value.shape}")
    return float(value.reshape(-1)[0])


def read_npz(path: str | Path) -> StreamArrays:
    """Read a stream file; a :class:`DataError` names what is wrong and how to save it instead."""
    path = Path(path)
    problem = _not_npz(path)
    if problem:
        raise DataError(problem)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "x" in files:
                x = _array(data, "x", path)
            elif set(PIXEL_KEYS) <= files:
                mean, std = _scalar(data, "pixel_mean", path), _scalar(data, "pixel_std", path)
                x = pixels_to_inputs(_array(data, "pixels", path), mean, std)
            else:
                found = ", ".join(sorted(files)) or "no arrays"
                raise DataError(f"data file {path} has no array 'x' (found: {found}); {HOW_TO_SAVE}")
            optional = {k: _array(data, k, path) if k in files else None for k in ("y", "domain", "timestamp")}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"data file {path} is not a readable NPZ archive ({exc}); {HOW_TO_SAVE}") from exc
    return StreamArrays(x, optional["y"], optional["domain"], optional["timestamp"])


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
    return path
