"""Adaptation-state checkpoints: one safetensors file, JSON metadata in the header.

The safetensors header's ``__metadata__`` holds a single key, "edgetta", whose value is a JSON string
{"format": "edgetta.checkpoint", "version": 1, "artifact_sha256": <artifact id>, ...caller meta}.
Writes are atomic (temp file in the same directory, fsync, os.replace, fsync of the directory), so a
crash leaves either the old or the new checkpoint, never a torn one. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from edgetta.atomic_io import write_atomic
from edgetta.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "edgetta.checkpoint"
CHECKPOINT_VERSION = 1
_META_KEY = "edgetta"
_RESERVED = ("format", "version", "artifact_sha256")


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, np.ndarray], meta: dict[str, Any], artifact_id: str
) -> None:
    """Atomically write ``tensors`` plus JSON-able ``meta`` for the artifact ``artifact_id`` to ``path``."""
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"checkpoint meta may not use reserved keys {clash}")
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "artifact_sha256": artifact_id, **meta}
    blob = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={_META_KEY: json.dumps(header)})
    write_atomic(path, blob)


def _read_header_meta(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` mapping of a safetensors blob that has already parsed successfully."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    return header.get("__metadata__") or {}


def load_checkpoint(
    path: str | os.PathLike[str], artifact_id: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read (tensors, caller meta); ``artifact_id`` (when given) must match the one saved with it."""
    target = Path(path)
    try:
        blob = target.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {target} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {target} could not be read: {exc}") from exc
    try:
        tensors = st_load(blob)
        st_meta = _read_header_meta(blob)
    except Exception as exc:  # the safetensors parser raises its own error type
        raise CheckpointError(f"checkpoint {target} is truncated or corrupt: {exc}") from exc
    raw = st_meta.get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{target} is not an edgetta checkpoint (no '{_META_KEY}' metadata)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{target}: the edgetta metadata is not valid JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{target} is not an edgetta checkpoint (format is not {CHECKPOINT_FORMAT!r})")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{target}: invalid checkpoint version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{target} is checkpoint version {version}; this edgetta reads up to {CHECKPOINT_VERSION} (upgrade edgetta)"
        )
    saved_for = header.get("artifact_sha256")
    if artifact_id is not None and saved_for != artifact_id:
        raise CheckpointError(
            f"{target} was written for artifact {saved_for!r}, not the loaded artifact {artifact_id!r}"
        )
    return tensors, {k: v for k, v in header.items() if k not in _RESERVED}
