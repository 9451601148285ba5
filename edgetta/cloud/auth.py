"""Device tokens (a YAML/JSON file) with constant-time lookup, and a per-device token-bucket rate limit."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgetta.errors import ConfigError

MIN_TOKEN_CHARS = 16
TOKENS_EXAMPLE = "devices: {cam-01: <token of 16+ chars>, cam-02: <token>}\nadmin: <token of 16+ chars>"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Tokens:
    """Per-device bearer tokens and the admin token (publishing), kept as sha256 digests."""

    devices: Mapping[str, bytes]
    admin: bytes | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], source: str = "tokens") -> Tokens:
        """``{"devices": {device_id: token}, "admin": token}``; every token at least 16 characters, all distinct."""
        if not isinstance(data, Mapping) or not isinstance(data.get("devices"), Mapping) or not data["devices"]:
            raise ConfigError(f"{source}: needs a non-empty 'devices' table, like\n{TOKENS_EXAMPLE}")
        unknown = sorted(set(data) - {"devices", "admin"})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; expected 'devices' and optional 'admin'")
        seen: set[str] = set()
        devices: dict[str, bytes] = {}
        for device, token in data["devices"].items():
            cls._check(token, f"{source}: token of device {device!r}", seen)
            devices[str(device)] = _digest(token)
        admin = data.get("admin")
        if admin is not None:
            cls._check(admin, f"{source}: admin token", seen)
        return cls(devices=devices, admin=_digest(admin) if admin is not None else None)

    @staticmethod
    def _check(token: object, what: str, seen: set[str]) -> None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{what} must be a string of at least {MIN_TOKEN_CHARS} characters")
        if token in seen:
            raise ConfigError(f"{what} is used twice: give every device (and the admin) its own token")
        seen.add(token)

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read a tokens file (YAML or JSON, chosen by content)."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--tokens {path}: cannot read ({exc.strerror or exc})") from exc
        try:
            data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"--tokens {path}: not valid YAML/JSON ({exc})") from exc
        return cls.from_mapping(data, source=f"--tokens {path}")

    def device_for(self, token: str | None) -> str | None:
        """The device whose token this is, else None. Compares against every device in constant time."""
        if not token:
            return None
        presented = _digest(token)
        found = None
        for device, digest in self.devices.items():
            if hmac.compare_digest(presented, digest):
                found = device
        return found

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and self.admin is not None and hmac.compare_digest(_digest(token), self.admin)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass
class RateLimiter:
    """Token bucket per key: ``rate`` requests per second on average, bursts up to ``burst``."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, key: str) -> float:
        """0.0 when a request may go ahead (and count it), else the seconds until one may."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
