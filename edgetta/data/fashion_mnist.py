"""Numpy-only reader for the Fashion-MNIST IDX files (Xiao et al., 2017).

The files are looked up in ``root``, else in ``$EDGETTA_FASHION_MNIST``, else in the directory the
Debian package ``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``). Both the
gzipped (``*.gz``) and raw IDX files are accepted.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_ROOT = "EDGETTA_FASHION_MNIST"

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Normalisation constants (pixel values scaled to [0, 1] first); the artifact manifest records them.
MEAN = 0.2860
STD = 0.3530

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08  # IDX data-type code for unsigned bytes
_INSTALL_HINT = "install it with `apt-get install -y dataset-fashion-mnist` or pass root=<dir with the IDX files>"


def default_root() -> Path:
    """Directory used when no ``root`` is given: ``$EDGETTA_FASHION_MNIST`` or the Debian path."""
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else DEFAULT_ROOT


def _open_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or raw) into a uint8 array of its declared shape."""
    path = Path(path)
    try:
        data = _open_bytes(path)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number (file is corrupt or not an IDX file)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX data type 0x{dtype_code:02x} is not unsigned byte (0x08)")
    if ndim < 1:
        raise ValueError(f"{path}: IDX file declares {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise ValueError(f"{path}: IDX payload has {len(data) - header} bytes, header declares {size} for {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; {_INSTALL_HINT}")


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a split as ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(_SPLIT_PREFIX)}")
    base = Path(root) if root is not None else default_root()
    if not base.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {base} does not exist; {_INSTALL_HINT}")
    prefix = _SPLIT_PREFIX[split]
    images_path = _find(base, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(base, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected images of shape [N, 28, 28], got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: {labels.shape} labels do not match {images.shape[0]} images")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """Normalise uint8 images [N, 28, 28] to float32 [N, 1, 28, 28]: ``(x / 255 - MEAN) / STD``."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected images of shape [N, H, W], got {images.shape}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]
