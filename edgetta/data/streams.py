"""Benchmark streams over Fashion-MNIST test images: episodic, continual, mixed, label-sorted and clean.

Every builder returns an :class:`edgetta.streams.ArraySource` with ``x`` (float32 [N, 1, 28, 28],
model-ready, see :func:`edgetta.data.fashion_mnist.to_model_input`), ``y`` (int64 [N]) and ``domain``
(int64 [N], an index into :data:`edgetta.data.corruptions.CORRUPTIONS`, or ``-1`` for clean data).
Builders are deterministic for a ``seed``; ``limit_per_domain`` keeps a seeded random subset of each
domain.

:func:`cached_stream` builds a stream once and keeps it as an ``.npz`` stream file (the compact
``pixels`` form of :mod:`edgetta.streams.npz`) under the cache directory (``$EDGETTA_CACHE`` or
``~/.cache/edgetta/streams``), keyed by its parameters; it is read back by :class:`edgetta.streams.NpzSource`.
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
from edgetta.streams import ArraySource, NpzSource
from edgetta.streams.npz import write_npz

CLEAN_DOMAIN = -1
CACHE_ENV = "EDGETTA_CACHE"
CACHE_VERSION = 2  # 2: the pixel form records pixel_mean and pixel_std


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


def _domain(
    images: np.ndarray, labels: np.ndarray, name: str | None, severity: int, seed: int, limit_per_domain: int | None
) -> ArraySource:
    """One domain (a corruption, or clean when ``name`` is None), in the original sample order."""
    domain = CLEAN_DOMAIN if name is None else CORRUPTIONS.index(name)
    keep = _subset(len(images), limit_per_domain, seed, domain)
    pixels = images[keep] if name is None else corrupt(images[keep], name, severity, seed)
    return ArraySource(
        to_model_input(pixels),
        labels[keep].astype(np.int64),
        np.full(len(keep), domain, dtype=np.int64),
        name=name or "clean",
    )


def _concat(parts: list[ArraySource], name: str) -> ArraySource:
    return ArraySource(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.domain for p in parts]),
        name=name,
    )


def _take(stream: ArraySource, order: np.ndarray, name: str) -> ArraySource:
    assert stream.y is not None and stream.domain is not None
    return ArraySource(stream.x[order], stream.y[order], stream.domain[order], name=name)


def _validate_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")


def clean(
    images: np.ndarray, labels: np.ndarray, limit_per_domain: int | None = None, seed: int = 0, shuffle: bool = False
) -> ArraySource:
    """Uncorrupted data (``domain == -1``), e.g. to measure forgetting after adaptation."""
    images, labels = _check(images, labels)
    stream = _domain(images, labels, None, 1, seed, limit_per_domain)
    if shuffle:
        stream = _take(stream, np.random.default_rng([int(seed), 1000]).permutation(len(stream.x)), "clean")
    return stream


def episodic(
    images: np.ndarray,
    labels: np.ndarray,
    name: str,
    severity: int,
    limit_per_domain: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> ArraySource:
    """A single corruption domain; the model is reset before each such stream."""
    images, labels = _check(images, labels)
    _validate_name(name)
    stream = _domain(images, labels, name, severity, seed, limit_per_domain)
    if shuffle:
        stream = _take(stream, np.random.default_rng([int(seed), 1001]).permutation(len(stream.x)), name)
    return stream


def continual(
    images: np.ndarray,
    labels: np.ndarray,
    severity: int,
    limit_per_domain: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    names: tuple[str, ...] = CORRUPTIONS,
) -> ArraySource:
    """All corruptions one after another without reset (``domain`` marks the boundaries)."""
    images, labels = _check(images, labels)
    parts = []
    for name in names:
        _validate_name(name)
        part = _domain(images, labels, name, severity, seed, limit_per_domain)
        if shuffle:
            part = _take(
                part, np.random.default_rng([int(seed), 1002, CORRUPTIONS.index(name)]).permutation(len(part.x)), name
            )
        parts.append(part)
    return _concat(parts, "continual")


def mixed(
    images: np.ndarray,
    labels: np.ndarray,
    severity: int,
    limit_per_domain: int | None = None,
    seed: int = 0,
    names: tuple[str, ...] = CORRUPTIONS,
) -> ArraySource:
    """All corruptions shuffled together into one stream (SAR's mixed-shift setting)."""
    stream = continual(images, labels, severity, limit_per_domain, seed, False, names)
    return _take(stream, np.random.default_rng([int(seed), 1003]).permutation(len(stream.x)), "mixed")


def label_sorted(
    images: np.ndarray,
    labels: np.ndarray,
    name: str | None,
    severity: int = 5,
    limit_per_domain: int | None = None,
    seed: int = 0,
) -> ArraySource:
    """One domain (``name=None`` for clean) with samples sorted by label: online label shift.

    The sort is stable, so samples of one class keep their (seeded) order.
    """
    images, labels = _check(images, labels)
    if name is not None:
        _validate_name(name)
    stream = _domain(images, labels, name, severity, seed, limit_per_domain)
    assert stream.y is not None
    order = np.random.default_rng([int(seed), 1004]).permutation(len(stream.x))
    order = order[np.argsort(stream.y[order], kind="stable")]
    return _take(stream, order, "label_sorted")


BUILDERS: dict[str, Callable[..., ArraySource]] = {
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


def save_stream(path: str | Path, stream: ArraySource) -> Path:
    """Write a labelled stream to ``path`` (an NPZ stream file, no pickled objects); returns the path.

    When ``x`` is exactly ``to_model_input`` of uint8 images (as for every built stream), the images are
    stored with their normalisation instead of ``x`` (4x smaller); :class:`edgetta.streams.NpzSource`
    recomputes ``x`` bit for bit.
    """
    if stream.y is None or stream.domain is None:
        raise ValueError(f"stream {stream.name} lacks labels or domains; benchmark streams carry both")
    arrays: dict[str, np.ndarray] = {"y": stream.y, "domain": stream.domain}
    pixels = _pixels_of(stream.x)
    if pixels is None:
        arrays["x"] = stream.x
    else:
        arrays.update(pixels=pixels, pixel_mean=np.float32(MEAN), pixel_std=np.float32(STD))
    return write_npz(path, arrays)


def cache_dir() -> Path:
    """The stream cache directory: ``$EDGETTA_CACHE`` or ``~/.cache/edgetta/streams``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgetta" / "streams"


def stream_key(kind: str, params: dict[str, Any], data_tag: str) -> str:
    """File name for a stream built by ``kind`` with ``params`` from the data identified by ``data_tag``."""
    blob = json.dumps(
        {"kind": kind, "params": params, "data": data_tag, "version": CACHE_VERSION}, sort_keys=True, default=str
    )
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Content hash of the source data, so caches of different inputs never collide."""
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def cached_stream(
    kind: str, images: np.ndarray, labels: np.ndarray, cache: str | Path | None = None, **params: Any
) -> NpzSource:
    """Build the stream ``BUILDERS[kind](images, labels, **params)``, or load it from the cache."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown stream kind {kind!r}; valid kinds: {', '.join(BUILDERS)}")
    path = Path(cache) if cache is not None else cache_dir()
    path = path / stream_key(kind, params, data_fingerprint(images, labels))
    if not path.is_file():
        save_stream(path, BUILDERS[kind](images, labels, **params))
    return NpzSource(path, name=kind)


def fashion_mnist_stream(
    kind: str, split: str = "test", root: str | Path | None = None, cache: str | Path | None = None, **params: Any
) -> NpzSource:
    """Cached stream ``kind`` over a Fashion-MNIST split, e.g. ``fashion_mnist_stream("continual", severity=5)``."""
    images, labels = load_fashion_mnist(split, root)
    return cached_stream(kind, images, labels, cache, **params)
