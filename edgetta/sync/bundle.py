"""Signed parameter bundles: one file carrying norm-layer tensors for one base artifact (docs/bundles.md).

Layout (all integers little-endian)::

    offset 0        8 bytes   magic b"EDGTBNDL"
    offset 8        u16       format version (1)
    offset 10       u32       M, length of the metadata (1 .. 65536)
    offset 14       M bytes   metadata: canonical JSON (sorted keys, no spaces, ASCII)
    offset 14+M     64 bytes  Ed25519 signature over bytes [0, 14+M): magic, format version, M, metadata
    offset 78+M     payload   safetensors file of the tensors; its size and sha256 are in the metadata

The signature covers the payload through its sha256 and size in the signed metadata. Verification bounds
every length before it reads, checks the signature before it trusts any metadata field, and parses the
payload (safetensors, never pickle) only after its hash matched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from edgetta.contract import Artifact, load_artifact
from edgetta.errors import BundleRejected, ConfigError
from edgetta.sync.keys import key_id, load_private_key, load_public_key, public_key_of

KEY_TYPES = (Ed25519PublicKey, Ed25519PrivateKey)
TrustedKey = Ed25519PublicKey | Ed25519PrivateKey | str | os.PathLike[str]

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BUNDLE_BYTES",
    "REJECTION_CODES",
    "BundleRejected",
    "VerifiedBundle",
    "allowed_tensors",
    "base_sha256",
    "canonical_json",
    "check_params",
    "create_bundle",
    "read_bundle_file",
    "sign_frame",
    "verify_bundle",
]

MAGIC = b"EDGTBNDL"
FORMAT_VERSION = 1
BUNDLE_FORMAT = "edgetta.bundle"
_HEAD = struct.Struct("<8sHI")  # magic, format version, metadata length
SIGNATURE_SIZE = 64
MAX_METADATA_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
MAX_TENSOR_HEADER = 1024 * 1024  # the safetensors JSON header of a payload
MAX_VERSION = 2**53 - 1  # versions stay exact in every JSON reader
METADATA_KEYS = frozenset(
    {
        "format",
        "format_version",
        "version",
        "base_sha256",
        "created",
        "expires",
        "payload_sha256",
        "payload_size",
        "key_id",
    }
)

# Every code verify_bundle / create_bundle may raise, in verification order (docs/bundles.md).
REJECTION_CODES = (
    "oversized",
    "truncated",
    "malformed",
    "unsupported_format",
    "unknown_key",
    "bad_signature",
    "payload_size",
    "payload_hash",
    "wrong_base",
    "stale_version",
    "expired",
    "bad_tensor_name",
    "bad_dtype",
    "bad_shape",
    "non_finite",
    "bad_value",
)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check: its version, tensors (float arrays, writable copies), signed
    metadata and the id of the key that signed it."""

    version: int
    params: dict[str, np.ndarray]
    metadata: dict[str, Any]
    key_id: str


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value is signed as: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def base_sha256(artifact: Artifact) -> str:
    """The id of the base artifact a bundle applies to: sha256 of the ``sha256sum``-style listing of the
    artifact's files as recorded in its manifest (graphs, parameters and, when present, the shared weights
    file), one ``"<hex>  <file>\\n"`` line per file, sorted by file name. ``load_artifact`` has checked the files
    against these hashes. Reproduce it in a shell inside the artifact directory with
    ``sha256sum adapt.onnx infer.onnx params.safetensors weights.bin | sha256sum`` (without ``weights.bin`` for
    an artifact that embeds its weights in the graphs)."""
    entries = [*artifact.manifest.graphs.values(), artifact.manifest.params]
    if artifact.manifest.weights is not None:  # the frozen weights: a bundle is only valid on the same ones
        entries.append(artifact.manifest.weights)
    listing = "".join(f"{e.sha256}  {e.file}\n" for e in sorted(entries, key=lambda e: e.file))
    return hashlib.sha256(listing.encode()).hexdigest()


def allowed_tensors(artifact: Artifact) -> dict[str, np.ndarray]:
    """The tensors a bundle may carry, with their source values: the trainable norm-layer affine parameters
    and the norm layers' running statistics (CEMA's downlink: affine parameters plus BN statistics)."""
    names = list(artifact.trainable_names)
    for layer in artifact.norm_layers:
        names += [n for n in (layer.running_mean, layer.running_var) if n]
    return {n: artifact.params[n] for n in names if n in artifact.params}


def check_params(params: Mapping[str, np.ndarray], artifact: Artifact) -> None:
    """Refuse tensors that are not a subset of :func:`allowed_tensors` with the same shapes and dtypes,
    or that hold non-finite values (or a negative running variance)."""
    allowed = allowed_tensors(artifact)
    variances = {layer.running_var for layer in artifact.norm_layers if layer.running_var}
    for name in sorted(params):
        value = params[name]
        if not isinstance(name, str) or name not in allowed:
            hint = ", ".join(sorted(allowed)[:4])
            raise BundleRejected(
                "bad_tensor_name",
                f"tensor {name!r} is not a trainable norm parameter or running statistic of the base artifact "
                f"(e.g. {hint}, ...)",
            )
        if not isinstance(value, np.ndarray):
            raise BundleRejected("bad_dtype", f"tensor {name!r} is a {type(value).__name__}, not a numpy array")
        expected = allowed[name]
        if value.dtype != expected.dtype:
            raise BundleRejected(
                "bad_dtype", f"tensor {name!r} has dtype {value.dtype}, the artifact's is {expected.dtype}"
            )
        if value.shape != expected.shape:
            raise BundleRejected(
                "bad_shape", f"tensor {name!r} has shape {value.shape}, the artifact's is {expected.shape}"
            )
        if not np.isfinite(value).all():
            bad = int(np.size(value) - np.isfinite(value).sum())
            raise BundleRejected("non_finite", f"tensor {name!r} holds {bad} non-finite values (nan or inf)")
        if name in variances and (value < 0).any():
            raise BundleRejected("bad_value", f"running variance {name!r} holds negative values")


def _artifact(artifact_dir: Artifact | str | os.PathLike[str]) -> Artifact:
    return artifact_dir if isinstance(artifact_dir, Artifact) else load_artifact(artifact_dir)


def sign_frame(metadata: bytes, payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Frame and sign already-encoded ``metadata`` and ``payload`` bytes; no check of either (tools, tests).
    Use :func:`create_bundle` to make a bundle."""
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(metadata)) + metadata
    return head + private_key.sign(head) + payload


def create_bundle(
    artifact_dir: Artifact | str | os.PathLike[str],
    params: Mapping[str, np.ndarray],
    *,
    version: int,
    private_key: Ed25519PrivateKey | str | os.PathLike[str],
    expires_in: float | None = None,
    now: float | None = None,
) -> bytes:
    """A signed bundle of ``params`` (a subset of the artifact's norm tensors) for the artifact, as bytes.
    ``version``: 1 .. 2**53-1, higher than every bundle the devices applied; ``expires_in``: seconds until
    devices refuse it (None: never; see docs/bundles.md, "indefinite freeze")."""
    artifact = _artifact(artifact_dir)
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ConfigError(f"bundle version must be an integer from 1 to {MAX_VERSION}, got {version!r}")
    if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
        raise ConfigError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    check_params(params, artifact)
    payload = st_save({name: np.ascontiguousarray(params[name]) for name in sorted(params)})
    created = float(time.time() if now is None else now)
    metadata = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "base_sha256": base_sha256(artifact),
        "created": created,
        "expires": None if expires_in is None else created + float(expires_in),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_size": len(payload),
        "key_id": key_id(key),
    }
    return sign_frame(canonical_json(metadata), payload, key)


def read_bundle_file(path: str | os.PathLike[str], max_bytes: int = MAX_BUNDLE_BYTES) -> bytes:
    """The bytes of a bundle file, refused as ``oversized`` before reading when larger than ``max_bytes``."""
    target = Path(path)
    with open(target, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise BundleRejected("oversized", f"bundle {target} is {size} bytes, over the limit of {max_bytes}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BundleRejected("oversized", f"bundle {target} grew past the limit of {max_bytes} bytes while read")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in metadata")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_metadata(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("ascii"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleRejected("malformed", f"bundle metadata is not ASCII JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleRejected("malformed", "bundle metadata is not a JSON object")
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def _check_schema(meta: dict[str, Any], raw: bytes) -> None:
    """Canonical bytes, every field present, of its type and range, nothing else (signed, so this finds
    issuer bugs, not attacks)."""
    try:
        canonical = canonical_json(meta)
    except ValueError:  # a number json reads as inf (1e400) cannot be written back
        canonical = b""
    if canonical != raw:
        raise BundleRejected("malformed", "bundle metadata is not canonical JSON (sorted keys, no spaces, finite)")
    if set(meta) != METADATA_KEYS:
        missing, extra = sorted(METADATA_KEYS - set(meta)), sorted(set(meta) - METADATA_KEYS)
        raise BundleRejected("malformed", f"bundle metadata fields differ: missing {missing}, unexpected {extra}")
    if meta["format"] != BUNDLE_FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise BundleRejected(
            "unsupported_format",
            f"bundle metadata says {meta['format']!r} version {meta['format_version']!r}; this edgetta reads "
            f"{BUNDLE_FORMAT!r} version {FORMAT_VERSION}",
        )
    problems = []
    if not (_is_int(meta["version"]) and 1 <= meta["version"] <= MAX_VERSION):
        problems.append(f"version {meta['version']!r} is not an integer from 1 to {MAX_VERSION}")
    if not _is_hex(meta["base_sha256"], 64):
        problems.append("base_sha256 is not 64 lowercase hex digits")
    if not _is_hex(meta["payload_sha256"], 64):
        problems.append("payload_sha256 is not 64 lowercase hex digits")
    if not (_is_int(meta["payload_size"]) and meta["payload_size"] >= 8):
        problems.append(f"payload_size {meta['payload_size']!r} is not an integer >= 8")
    if not _is_time(meta["created"]):
        problems.append("created is not a finite number of seconds")
    expires = meta["expires"]
    if expires is not None and not (_is_time(expires) and _is_time(meta["created"]) and expires > meta["created"]):
        problems.append("expires is neither null nor a time after created")
    if problems:
        raise BundleRejected("malformed", "bundle metadata is invalid: " + "; ".join(problems))


def _trusted(trusted_keys: Sequence[TrustedKey]) -> dict[str, Ed25519PublicKey]:
    keys = [public_key_of(k) if isinstance(k, KEY_TYPES) else load_public_key(k) for k in trusted_keys]
    if not keys:
        raise ConfigError("no trusted public key given: pass the public.pem of the key that signs bundles")
    return {key_id(k): k for k in keys}


def _parse_payload(payload: bytes) -> dict[str, np.ndarray]:
    (header_size,) = struct.unpack("<Q", payload[:8])
    if header_size > min(len(payload) - 8, MAX_TENSOR_HEADER):
        raise BundleRejected("malformed", f"payload header claims {header_size} bytes; the payload is not safetensors")
    try:
        tensors = st_load(payload)
    except Exception as exc:  # safetensors raises its own error type for a bad file
        raise BundleRejected("malformed", f"payload is not a valid safetensors file ({exc})") from None
    return {name: np.array(value, copy=True) for name, value in tensors.items()}


def verify_bundle(
    data: bytes,
    *,
    artifact_dir: Artifact | str | os.PathLike[str],
    trusted_keys: Sequence[TrustedKey],
    applied_version: int | None = None,
    now: float | None = None,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> VerifiedBundle:
    """Check ``data`` in the documented order and return its contents, or raise :class:`BundleRejected`
    with the first failed check's code. ``applied_version``: the version the device runs (None: none yet);
    ``trusted_keys``: the keys whose signatures are accepted (key objects or public PEM paths)."""
    artifact = _artifact(artifact_dir)
    keys = _trusted(trusted_keys)
    if len(data) > max_bytes:
        raise BundleRejected("oversized", f"bundle is {len(data)} bytes, over the limit of {max_bytes}")
    if len(data) < _HEAD.size:
        raise BundleRejected("truncated", f"bundle is {len(data)} bytes, shorter than its {_HEAD.size}-byte header")
    magic, fmt, meta_size = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BundleRejected("malformed", f"not an edgetta bundle (starts with {magic!r}, expected {MAGIC!r})")
    if fmt != FORMAT_VERSION:
        raise BundleRejected(
            "unsupported_format", f"bundle format version {fmt}; this edgetta reads version {FORMAT_VERSION}"
        )
    if not 1 <= meta_size <= MAX_METADATA_BYTES:
        raise BundleRejected("malformed", f"metadata length {meta_size} is outside 1..{MAX_METADATA_BYTES}")
    signed_end = _HEAD.size + meta_size
    if len(data) < signed_end + SIGNATURE_SIZE:
        raise BundleRejected("truncated", f"bundle ends at byte {len(data)}, before its metadata and signature")
    raw_meta = bytes(data[_HEAD.size : signed_end])
    meta = _parse_metadata(raw_meta)
    signer = meta.get("key_id")
    if not isinstance(signer, str) or signer not in keys:
        raise BundleRejected(
            "unknown_key", f"bundle is signed by key {signer!r}, not by a trusted key ({', '.join(sorted(keys))})"
        )
    try:
        keys[signer].verify(bytes(data[signed_end : signed_end + SIGNATURE_SIZE]), bytes(data[:signed_end]))
    except InvalidSignature:
        raise BundleRejected("bad_signature", f"bundle signature does not verify with key {signer}") from None
    _check_schema(meta, raw_meta)
    payload = bytes(data[signed_end + SIGNATURE_SIZE :])
    declared = meta["payload_size"]
    if declared > max_bytes:
        raise BundleRejected("oversized", f"bundle declares a {declared}-byte payload, over the limit of {max_bytes}")
    if len(payload) < declared:
        raise BundleRejected("truncated", f"payload has {len(payload)} of its {declared} bytes")
    if len(payload) != declared:
        raise BundleRejected("payload_size", f"payload has {len(payload)} bytes, the signed size is {declared}")
    if hashlib.sha256(payload).hexdigest() != meta["payload_sha256"]:
        raise BundleRejected("payload_hash", "payload sha256 does not match the signed payload_sha256")
    base = base_sha256(artifact)
    if meta["base_sha256"] != base:
        raise BundleRejected(
            "wrong_base",
            f"bundle is for base artifact {meta['base_sha256'][:16]}..., this device runs {base[:16]}...",
        )
    if applied_version is not None and meta["version"] <= applied_version:
        raise BundleRejected(
            "stale_version",
            f"bundle version {meta['version']} is not newer than the applied version {applied_version} "
            "(rollback or replay)",
        )
    clock = time.time() if now is None else now
    if meta["expires"] is not None and clock >= meta["expires"]:
        raise BundleRejected(
            "expired", f"bundle expired {clock - meta['expires']:.0f} s ago (expires {meta['expires']:.0f})"
        )
    params = _parse_payload(payload)
    check_params(params, artifact)
    return VerifiedBundle(version=meta["version"], params=params, metadata=meta, key_id=signer)
