"""Published bundles on disk: monotonic versions that survive restarts, atomic writes, the latest pointer.

Layout of the state directory::

    bundles/<version>.bundle     every published bundle (signed bytes, as served)
    latest.json                  {"version", "size", "sha256"} of the newest
    params.safetensors           the parameters of the newest bundle (the learner resumes from them)

A new version is one more than the largest ever published here, so a restarted server never reuses a number
(devices refuse versions not newer than the one they applied).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetta.errors import ConfigError

Signer = Callable[[Mapping[str, np.ndarray], int], bytes]
_BUNDLE = re.compile(r"^(\d+)\.bundle$")


@dataclass(frozen=True)
class BundleInfo:
    version: int
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "size": self.size, "sha256": self.sha256, "url": f"/v1/bundles/{self.version}"}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class BundleStore:
    """Versioned bundles under ``state_dir``; ``publish`` signs with ``signer(params, version)``."""

    def __init__(self, state_dir: str | Path, signer: Signer) -> None:
        self.root = Path(state_dir)
        self.bundles = self.root / "bundles"
        try:
            self.bundles.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--state {self.root}: cannot create ({exc.strerror or exc})") from exc
        self._signer = signer
        self._lock = threading.Lock()
        self._latest = self._read_latest()

    def _read_latest(self) -> BundleInfo | None:
        pointer = self.root / "latest.json"
        if pointer.is_file():
            try:
                data = json.loads(pointer.read_text())
                info = BundleInfo(int(data["version"]), int(data["size"]), str(data["sha256"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"--state {self.root}: latest.json is damaged ({exc}); restore it or move it"
                ) from exc
            if (self.bundles / f"{info.version}.bundle").is_file():
                return info
        versions = [int(m.group(1)) for p in self.bundles.iterdir() if (m := _BUNDLE.match(p.name))]
        if not versions:
            return None
        data = (self.bundles / f"{max(versions)}.bundle").read_bytes()
        return BundleInfo(max(versions), len(data), hashlib.sha256(data).hexdigest())

    @property
    def latest(self) -> BundleInfo | None:
        return self._latest

    def path(self, version: int) -> Path | None:
        """The file of bundle ``version``, or None when there is none."""
        path = self.bundles / f"{version}.bundle"
        return path if path.is_file() else None

    def last_params(self) -> dict[str, np.ndarray] | None:
        """Parameters of the newest published bundle (None before the first)."""
        from safetensors.numpy import load_file

        path = self.root / "params.safetensors"
        return dict(load_file(str(path))) if path.is_file() and self._latest is not None else None

    def publish(self, params: Mapping[str, np.ndarray]) -> BundleInfo:
        """Sign ``params`` as the next version, write it, then move the latest pointer to it."""
        from safetensors.numpy import save

        with self._lock:
            on_disk = [int(m.group(1)) for p in self.bundles.iterdir() if (m := _BUNDLE.match(p.name))]
            version = max([0, *on_disk, self._latest.version if self._latest else 0]) + 1
            data = self._signer(params, version)
            _write_atomic(self.bundles / f"{version}.bundle", data)
            arrays = {k: np.ascontiguousarray(v) for k, v in params.items()}
            _write_atomic(self.root / "params.safetensors", save(arrays, metadata={"version": str(version)}))
            info = BundleInfo(version, len(data), hashlib.sha256(data).hexdigest())
            _write_atomic(self.root / "latest.json", json.dumps(info.to_json()).encode())
            self._latest = info
            return info
