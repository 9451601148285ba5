"""Ed25519 signing keys for parameter bundles (the ``cryptography`` package).

``private.pem``: PKCS#8 PEM, unencrypted, file mode 0600; ``public.pem``: SubjectPublicKeyInfo PEM. A key's
id is the first 16 hex digits of the sha256 of its 32 raw public-key bytes (docs/bundles.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgetta.errors import SigningKeyError

__all__ = [
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_of",
]

PRIVATE_FILE = "private.pem"
PUBLIC_FILE = "public.pem"
_MAX_PEM_BYTES = 16 * 1024  # an Ed25519 PEM is ~120 bytes; anything far larger is not a key file


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never widened by the umask's absence, never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a fresh Ed25519 key pair to ``out_dir``: (``private.pem`` mode 0600, ``public.pem``).
    Refuses to overwrite an existing key: losing a private key cannot be undone."""
    directory = Path(out_dir)
    private_path, public_path = directory / PRIVATE_FILE, directory / PUBLIC_FILE
    existing = [p for p in (private_path, public_path) if p.exists()]
    if existing:
        raise SigningKeyError(
            f"{existing[0]} already exists; choose another --out directory (keys are never overwritten)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return private_path, public_path


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    target = Path(path)
    try:
        size = target.stat().st_size
        if size > _MAX_PEM_BYTES:
            raise SigningKeyError(f"{what} {target} is {size} bytes, not an Ed25519 PEM key file")
        return target.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"{what} {target} does not exist; create one with `edgetta keys generate`") from None
    except IsADirectoryError:
        raise SigningKeyError(f"{what} {target} is a directory; pass the .pem file inside it") from None
    except OSError as exc:
        raise SigningKeyError(f"{what} {target} cannot be read ({exc})") from exc


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (as written by :func:`generate_keypair`)."""
    data = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"private key {path} is not an unencrypted PEM private key ({exc}); pass the private.pem "
            "written by `edgetta keys generate`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"private key {path} is a {type(key).__name__}; bundles are signed with Ed25519 keys")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``."""
    data = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"public key {path} is not a PEM public key ({exc}); pass the public.pem written by `edgetta keys generate`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public key {path} is a {type(key).__name__}; bundles are verified with Ed25519 keys")
    return key


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    """The public half of ``key`` (itself when it is already public)."""
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of sha256 over the 32 raw public-key bytes (a private key gives its public key's id)."""
    raw = public_key_of(public_key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
