"""Benchmark streams over Fashion-MNIST test images: episodic, continual, mixed, label-sorted and clean.

Every builder returns a dict of numpy arrays: ``x`` (float32 [N, 1, 28, 28], model-ready, see
:func:`edgetta.data.fashion_mnist.to_model_input`), ``y`` (int64 [N]) and ``domain`` (int64 [N], an
index into :data:`edgetta.data.corruptions.CORRUPTIONS`, or ``-1`` for clean data). Builders are
deterministic for a ``seed``; ``limit_per_domain`` keeps a seeded random subset of each domain.

:func:`cached_stream` builds a stream once and keeps it as an ``.npz`` file under the cache
directory (``$EDGETTA_CACHE`` or ``~/.cache/edgetta/streams``), keyed by its parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.data.corruptions import CORRUPTIONS, corrupt
from edgetta.data.fashion_mnist import MEAN, STD, load_fashion_mnist, to_model_input

Stream = dict[str, np.ndarray]

CLEAN_DOMAIN = -1
STREAM_KEYS: tuple[str, ...] = ("x", "y", "domain")
CACHE_ENV = "EDGETTA_CACHE"


def _check(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
    return images, labels


def _subset(n: int, limit: int | None, seed: int, domain: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of size ``limit`` (all indices when ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 0:
        raise ValueError(f"limit_per_domain must be >= 0, got {limit}")
    rng = np.random.default_rng([int(seed), domain + 1, 7])
    return np.sort(rng.choice(n, size=limit, replace=False))


def _domain(images: np.ndarray, labels: np.ndarray, name: str | None, severity: int, seed: int,
            limit_per_domain: int | None) -> Stream:
    """One domain (a corruption, or clean when ``name`` is None), in the original sample order."""
    domain = CLEAN_DOMAIN if name is None else CORRUPTIONS.index(name)
    keep = _subset(len(images), limit_per_domain, seed, domain)
    pixels = images[keep] if name is None else corrupt(images[keep], name, severity, seed)
    return {
        "x": to_model_input(pixels),
        "y": labels[keep].astype(np.int64),
        "domain": np.full(len(keep), domain, dtype=np.int64),
    }


def _concat(parts: list[Stream]) -> Stream:
    return {key: np.concatenate([p[key] for p in parts]) for key in STREAM_KEYS}


def _take(stream: Stream, order: np.ndarray) -> Stream:
    return {key: stream[key][order] for key in STREAM_KEYS}


def _validate_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")


def clean(images: np.ndarray, labels: np.ndarray, limit_per_domain: int | None = None, seed: int = 0,
          shuffle: bool = False) -> Stream:
    """Uncorrupted data (``domain == -1``), e.g. to measure forgetting after adaptation."""
    images, labels = _check(images, labels)
    stream = _domain(images, labels, None, 1, seed, limit_per_domain)
    if shuffle:
        stream = _take(stream, np.random.default_rng([int(seed), 1000]).permutation(len(stream["y"])))
    return stream


def episodic(images: np.ndarray, labels: np.ndarray, name: str, severity: int, limit_per_domain: int | None = None,
             seed: int = 0, shuffle: bool = False) -> Stream:
    """A single corruption domain; the model is reset before each such stream."""
    images, labels = _check(images, labels)
    _validate_name(name)
    stream = _domain(images, labels, name, severity, seed, limit_per_domain)
    if shuffle:
        stream = _take(stream, np.random.default_rng([int(seed), 1001]).permutation(len(stream["y"])))
    return stream


def continual(images: np.ndarray, labels: np.ndarray, severity: int, limit_per_domain: int | None = None,
              seed: int = 0, shuffle: bool = False, names: tuple[str, ...] = CORRUPTIONS) -> Stream:
    """All corruptions one after another without reset (``domain`` marks the boundaries)."""
    images, labels = _check(images, labels)
    parts = []
    for name in names:
        _validate_name(name)
        part = _domain(images, labels, name, severity, seed, limit_per_domain)
        if shuffle:
            part = _take(part, np.random.default_rng([int(seed), 1002, CORRUPTIONS.index(name)])
                         .permutation(len(part["y"])))
        parts.append(part)
    return _concat(parts)


def mixed(images: np.ndarray, labels: np.ndarray, severity: int, limit_per_domain: int | None = None,
          seed: int = 0, names: tuple[str, ...] = CORRUPTIONS) -> Stream:
    """All corruptions shuffled together into one stream (SAR's mixed-shift setting)."""
    stream = continual(images, labels, severity, limit_per_domain, seed, False, names)
    return _take(stream, np.random.default_rng([int(seed), 1003]).permutation(len(stream["y"])))


def label_sorted(images: np.ndarray, labels: np.ndarray, name: str | None, severity: int = 5,
                 limit_per_domain: int | None = None, seed: int = 0) -> Stream:
    """One domain (``name=None`` for clean) with samples sorted by label: online label shift.

    The sort is stable, so samples of one class keep their (seeded) order.
    """
    images, labels = _check(images, labels)
    if name is not None:
        _validate_name(name)
    stream = _domain(images, labels, name, severity, seed, limit_per_domain)
    order = np.random.default_rng([int(seed), 1004]).permutation(len(stream["y"]))
    order = order[np.argsort(stream["y"][order], kind="stable")]
    return _take(stream, order)


BUILDERS: dict[str, Callable[..., Stream]] = {
    "clean": clean,
    "episodic": episodic,
    "continual": continual,
    "mixed": mixed,
    "label_sorted": label_sorted,
}


# ------------------------------------------------------------------------------------------- cache


def _pixels_of(x: np.ndarray) -> np.ndarray | None:
    """The uint8 images that :func:`to_model_input` maps exactly to ``x``, or None if there are none."""
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 1:
        return None
    pixels = np.clip(np.rint((x[:, 0] * np.float32(STD) + np.float32(MEAN)) * 255), 0, 255).astype(np.uint8)
    return pixels if np.array_equal(to_model_input(pixels), x) else None


def save_stream(path: str | Path, stream: Stream) -> Path:
    """Write a stream to ``path`` (``.npz``, no pickled objects); returns the path.

    When ``x`` is exactly ``to_model_input`` of uint8 images (as for every built stream), the images are
    stored instead of ``x`` (4x smaller) and :func:`load_stream` recomputes ``x`` bit for bit.
    """
    path = Path(path)
    missing = [k for k in STREAM_KEYS if k not in stream]
    if missing:
        raise ValueError(f"stream lacks {missing}")
    arrays = {k: np.ascontiguousarray(stream[k]) for k in STREAM_KEYS}
    pixels = _pixels_of(arrays["x"])
    if pixels is not None:
        del arrays["x"]
        arrays["pixels"] = pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_stream(path: str | Path) -> Stream:
    """Read a stream written by :func:`save_stream` (``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as data:
        files = set(data.files)
        if "pixels" in files:
            files.add("x")
        missing = [k for k in STREAM_KEYS if k not in files]
        if missing:
            raise ValueError(f"{path}: not a stream file (missing {missing})")
        x = to_model_input(data["pixels"]) if "pixels" in data.files else data["x"]
        return {"x": x, "y": data["y"], "domain": data["domain"]}


def cache_dir() -> Path:
    """The stream cache directory: ``$EDGETTA_CACHE`` or ``~/.cache/edgetta/streams``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgetta" / "streams"


def stream_key(kind: str, params: dict[str, Any], data_tag: str) -> str:
    """File name for a stream built by ``kind`` with ``params`` from the data identified by ``data_tag``."""
    blob = json.dumps({"kind": kind, "params": params, "data": data_tag, "version": 1}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Content hash of the source data, so caches of different inputs never collide."""
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def cached_stream(kind: str, images: np.ndarray, labels: np.ndarray, cache: str | Path | None = None,
                  **params: Any) -> Stream:
    """Build the stream ``BUILDERS[kind](images, labels, **params)``, or load it from the cache."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown stream kind {kind!r}; valid kinds: {', '.join(BUILDERS)}")
    path = Path(cache) if cache is not None else cache_dir()
    path = path / stream_key(kind, params, data_fingerprint(images, labels))
    if path.is_file():
        return load_stream(path)
    stream = BUILDERS[kind](images, labels, **params)
    save_stream(path, stream)
    return stream


def fashion_mnist_stream(kind: str, split: str = "test", root: str | Path | None = None,
                         cache: str | Path | None = None, **params: Any) -> Stream:
    """Cached stream ``kind`` over a Fashion-MNIST split, e.g. ``fashion_mnist_stream("continual", severity=5)``."""
    images, labels = load_fashion_mnist(split, root)
    return cached_stream(kind, images, labels, cache, **params)
