"""The device's HTTP client for the sync server (``edgetta cloud serve``), and the upload body format.

Endpoints (all with ``Authorization: Bearer <device token>``):
``POST /v1/samples`` (body: safetensors, gzip-encoded, holding ``x`` float32 [n, ...input shape] and ``entropy``
float32 [n]; metadata ``device_id``, ``base_sha256``, ``batch_seq``), ``GET /v1/bundles/latest`` (JSON, or 204
when nothing is published), ``GET /v1/bundles/{version}`` (the bundle bytes). Every network problem becomes a
:class:`Reply` with ``status`` 0 and the error text, so callers decide on retries without catching exceptions.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetta.streams.extras import MissingExtra


@dataclass
class Reply:
    """One HTTP exchange: ``status`` (0: no answer), body, the Retry-After header in seconds (or None)."""

    status: int
    body: bytes = b""
    error: str = ""
    retry_after: float | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        """A short text of what went wrong, for logs."""
        if self.status == 0:
            return self.error
        data = self.json()
        if isinstance(data, dict) and "detail" in data:
            return f"HTTP {self.status}: {data['detail']}"
        return f"HTTP {self.status}: {self.body[:200].decode(errors='replace')}"


def encode_samples(
    x: np.ndarray, entropy: np.ndarray | None, *, device_id: str, base_sha256: str, batch_seq: int
) -> bytes:
    """The upload body: safetensors bytes of ``x`` (and ``entropy``) with the batch's metadata, gzip-compressed."""
    from safetensors.numpy import save

    tensors = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if entropy is not None:
        tensors["entropy"] = np.ascontiguousarray(entropy, dtype=np.float32).reshape(-1)
    meta = {"device_id": device_id, "base_sha256": base_sha256, "batch_seq": str(int(batch_seq))}
    return gzip.compress(save(tensors, metadata=meta), compresslevel=6)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class SyncClient:
    """A small blocking client, used only from the sync threads (never the inference thread)."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        timeout: float = 10.0,
        verify: bool | str = True,
        max_bundle_bytes: int = 16 * 2**20,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise MissingExtra("sync needs httpx; install it with: pip install 'edgetta[sync]'") from exc
        self._httpx = httpx
        self.server = server.rstrip("/")
        self.max_bundle_bytes = int(max_bundle_bytes)
        self._client = httpx.Client(
            base_url=self.server,
            timeout=timeout,
            verify=verify,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "edgetta-edge"},
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            r = self._client.request(method, path, **kwargs)
        except self._httpx.HTTPError as exc:
            return Reply(0, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return Reply(r.status_code, r.content, retry_after=_retry_after(r.headers.get("retry-after")))

    def upload(self, body: bytes) -> Reply:
        headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
        return self._call("POST", "/v1/samples", content=body, headers=headers)

    def latest(self) -> Reply:
        return self._call("GET", "/v1/bundles/latest")

    def download(self, url: str) -> Reply:
        """The bundle bytes at ``url`` (a path on the server), refused beyond ``max_bundle_bytes``."""
        try:
            with self._client.stream("GET", url) as r:
                if r.status_code != 200:
                    r.read()
                    return Reply(r.status_code, r.content)
                chunks, total = [], 0
                for chunk in r.iter_bytes():
                    total += len(chunk)
                    if total > self.max_bundle_bytes:
                        return Reply(0, error=f"bundle larger than {self.max_bundle_bytes} bytes: refused")
                    chunks.append(chunk)
                return Reply(200, b"".join(chunks))
        except self._httpx.HTTPError as exc:
            return Reply(0, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._client.close()
