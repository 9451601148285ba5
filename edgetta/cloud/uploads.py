"""Sample uploads: size-limited gzip decoding and validation of the safetensors body, before any learning.

An upload is a safetensors file with ``x`` (float32 ``[n, *input shape]``) and optional ``entropy`` (float32
``[n]``), and the metadata ``device_id``, ``base_sha256`` and ``batch_seq``. Every check raises
:class:`UploadError` with the HTTP status to answer and a message naming the problem.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAX_HEADER_BYTES = 64 * 1024
REQUIRED_METADATA = ("device_id", "base_sha256", "batch_seq")


class UploadError(Exception):
    """An upload refused with ``status`` (413 too large, 422 invalid) and a message for the device."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UploadSpec:
    """What an upload must look like: the model input shape without the batch dimension, the base artifact's
    sha256, at most ``max_samples`` rows, at most ``max_bytes`` of body both on the wire and decoded."""

    sample_shape: tuple[int, ...]
    base_sha256: str
    max_samples: int = 256
    max_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """A validated upload."""

    device_id: str
    batch_seq: int
    x: np.ndarray
    entropy: np.ndarray | None

    @property
    def count(self) -> int:
        return int(self.x.shape[0])


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decode a gzip body, refusing (413) as soon as the decoded size would pass ``limit`` (a gzip bomb never
    expands beyond ``limit + 1`` bytes in memory); a damaged stream is a 422."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UploadError(422, f"body is not valid gzip ({exc})") from exc
    if len(out) > limit:
        raise UploadError(413, f"decoded body exceeds the limit of {limit} bytes")
    if not decoder.eof:
        raise UploadError(422, "gzip body is truncated")
    return out


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise UploadError(422, "body is not a safetensors file (shorter than its 8-byte header length)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or size > len(data) - 8:
        raise UploadError(422, f"safetensors header length {size} is invalid for a {len(data)}-byte body")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError) as exc:
        raise UploadError(422, f"safetensors header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise UploadError(422, "safetensors header is not a JSON object")
    return header


def _metadata(header: dict) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    missing = [k for k in REQUIRED_METADATA if not isinstance(meta.get(k), str) or not meta.get(k)]
    if missing:
        raise UploadError(422, f"upload metadata lacks {missing} (safetensors __metadata__ strings)")
    return meta


def _check_tensor(header: dict, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    info = header[name]
    if not isinstance(info, dict):
        raise UploadError(422, f"tensor {name!r} has a malformed header entry")
    if info.get("dtype") != dtype:
        raise UploadError(422, f"tensor {name!r} has dtype {info.get('dtype')}, expected {dtype} (float32)")
    if tuple(info.get("shape") or ()) != shape:
        raise UploadError(422, f"tensor {name!r} has shape {info.get('shape')}, expected {list(shape)}")


def parse_upload(data: bytes, spec: UploadSpec, device_id: str) -> Upload:
    """Validate an upload body from ``device_id`` against ``spec``; returns the arrays and metadata."""
    header = _header(data)
    meta = _metadata(header)
    names = set(header) - {"__metadata__"}
    extra = sorted(names - {"x", "entropy"})
    if extra:
        raise UploadError(422, f"unexpected tensor(s) {extra}: an upload holds 'x' and optional 'entropy'")
    if "x" not in names:
        raise UploadError(422, "upload has no tensor 'x' (the model inputs)")
    shape = header["x"].get("shape") if isinstance(header["x"], dict) else None
    n = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else -1
    if not 1 <= n <= spec.max_samples:
        raise UploadError(422, f"'x' holds {n} samples; an upload holds 1 to {spec.max_samples}")
    _check_tensor(header, "x", "F32", (n, *spec.sample_shape))
    if "entropy" in names:
        _check_tensor(header, "entropy", "F32", (n,))
    if meta["device_id"] != device_id:
        raise UploadError(422, f"metadata device_id {meta['device_id']!r} is not the device of this token")
    if meta["base_sha256"] != spec.base_sha256:
        raise UploadError(
            422,
            f"base_sha256 {meta['base_sha256'][:16]}... is not this server's base artifact {spec.base_sha256[:16]}...",
        )
    try:
        batch_seq = int(meta["batch_seq"])
    except ValueError as exc:
        raise UploadError(422, f"batch_seq {meta['batch_seq']!r} is not an integer") from exc
    if batch_seq < 0:
        raise UploadError(422, f"batch_seq {batch_seq} is negative")
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for inconsistent offsets
        raise UploadError(422, f"safetensors body is inconsistent with its header ({exc})") from exc
    x = tensors["x"]
    if not np.all(np.isfinite(x)):
        raise UploadError(422, "'x' holds NaN or infinite values")
    entropy = tensors.get("entropy")
    if entropy is not None and not (np.all(np.isfinite(entropy)) and np.all(entropy >= 0)):
        raise UploadError(422, "'entropy' must be finite and non-negative")
    return Upload(device_id=device_id, batch_seq=batch_seq, x=x, entropy=entropy)
