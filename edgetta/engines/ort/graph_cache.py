"""The cache of verified rewritten graphs, shared by every artifact (entries are keyed by graph content).

An entry ``<key>.onnx`` + ``<key>.json`` is a rewritten graph that passed verification against the exported
graph. The key covers everything the rewritten bytes depend on: the exported graph (its sha256, size and
mtime), the graph (infer/adapt), the fixed ``bn_alpha`` and the output subset, and a fingerprint of the code
and libraries (every source file of the rewrite and verification modules, the onnx and onnxruntime versions,
the edgetta version). The meta file records the sha256 of the .onnx bytes; an entry whose bytes differ
(tampered, truncated) is never used. A rewrite that failed verification leaves ``<key>.rejected.json`` with
the reason, so later starts run the exported graph without rewriting and verifying again.
Location: ``EngineOptions.extra["graph_cache"]`` (a folder, or False for none), else ``<cache_dir>/graphs``,
else ``$EDGETTA_CACHE_DIR/graphs``, else ``~/.cache/edgetta/graphs``. Rewritten graphs reference the
artifact's ``weights.bin`` by offset and hold no weights of their own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

import edgetta
from edgetta.contract import Artifact
from edgetta.engines.options import EngineOptions

log = logging.getLogger("edgetta.engine")
_HERE = Path(__file__).resolve().parent


def rewrite_sources() -> list[Path]:
    """Every source file whose code decides what a cached graph holds: the rewrites and the verification."""
    return sorted((_HERE / "rewrite").glob("*.py")) + [_HERE / "verify.py"]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that read, write and judge the rewritten graphs (onnx is not imported)."""
    try:
        onnx_version = importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:
        onnx_version = "?"
    return {"onnx": onnx_version, "onnxruntime": ort.__version__, "edgetta": edgetta.__version__}


def code_fingerprint() -> str:
    """Hash of every rewrite/verification source file (name and bytes) and of the library versions."""
    digest = hashlib.sha256()
    for path in rewrite_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return digest.hexdigest()


def default_folder(options: EngineOptions) -> Path | None:
    """Where the cache lives for these options (None: no cache)."""
    setting = options.extra.get("graph_cache", True)
    if setting is False or setting is None:
        return None
    if isinstance(setting, str | Path):
        return Path(setting)
    if options.cache_dir:
        return Path(options.cache_dir) / "graphs"
    if os.environ.get("EDGETTA_CACHE_DIR"):
        return Path(os.environ["EDGETTA_CACHE_DIR"]) / "graphs"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetta" / "graphs"


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class GraphCache:
    """Verified rewritten graphs and graph input/output names in ``folder`` (None: keep nothing)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @functools.cached_property
    def fingerprint(self) -> str:
        return code_fingerprint()

    @staticmethod
    def source_key(artifact: Artifact, which: str) -> str:
        """Identifies the exported graph file ``which`` of ``artifact`` (its recorded hash, size and mtime)."""
        stat = artifact.graph_path(which).stat()
        parts = [which, artifact.manifest.graphs[which].sha256, stat.st_size, stat.st_mtime_ns]
        return _digest(parts)[:20]

    def variant_key(
        self, artifact: Artifact, which: str, bn_alpha: float | None, outputs: tuple[str, ...] | None
    ) -> str:
        """The entry name of a rewrite of graph ``which`` at ``bn_alpha`` keeping ``outputs`` (None: all)."""
        parts = [self.source_key(artifact, which), bn_alpha, outputs, self.fingerprint]
        return f"{which}-{_digest(parts)[:24]}"

    # -- rewritten graphs --------------------------------------------------------------------------
    def load(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """(graph bytes, report) of a verified entry; None when absent or when its bytes fail their hash."""
        if self.folder is None:
            return None
        meta = _read_json(self.folder / f"{key}.json")
        if meta is None or not isinstance(meta.get("sha256"), str):
            return None
        try:
            data = (self.folder / f"{key}.onnx").read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            log.info("edgetta engine: cached graph %s does not match its recorded hash; rebuilding it", key)
            return None
        return data, meta.get("report") or {}

    def store(self, key: str, data: bytes, report: dict[str, Any]) -> None:
        """Keep a verified graph (the meta file last, so a meta file always names complete bytes)."""
        if self.folder is None:
            return
        _write_atomic(self.folder / f"{key}.onnx", data)
        meta = {"sha256": hashlib.sha256(data).hexdigest(), "report": report}
        _write_atomic(self.folder / f"{key}.json", json.dumps(meta).encode())

    # -- rejected rewrites ----------------------------------------------------------------------------
    def rejection(self, key: str) -> str | None:
        """Why the rewrite ``key`` failed its verification before (None: never rejected). The key covers the
        graph and the rewrite code, so a rejection holds until either changes."""
        meta = _read_json(self.folder / f"{key}.rejected.json") if self.folder else None
        reason = meta.get("reason") if meta else None
        return reason if isinstance(reason, str) else None

    def reject(self, key: str, reason: str) -> None:
        """Remember that the rewrite ``key`` was not used, so later starts skip rewriting and verifying it."""
        if self.folder is not None:
            _write_atomic(self.folder / f"{key}.rejected.json", json.dumps({"reason": reason}).encode())

    # -- graph input/output names ------------------------------------------------------------------
    def load_io(self, key: str) -> dict[str, list[str]] | None:
        return _read_json(self.folder / f"io-{key}.json") if self.folder else None

    def store_io(self, key: str, info: dict[str, list[str]]) -> None:
        if self.folder is not None:
            _write_atomic(self.folder / f"io-{key}.json", json.dumps(info).encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written (read-only folder) is simply not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass
