"""``edgetta cloud serve``'s HTTP API (FastAPI on uvicorn): device uploads in, signed bundles out.

Endpoints (``Authorization: Bearer <token>`` everywhere but ``/healthz``):

* ``POST /v1/samples``: a safetensors body (``Content-Encoding: gzip`` allowed), see
  :mod:`edgetta.cloud.uploads`. 200 ``{"accepted": n}``; 401 bad token; 413 too large (on the wire or
  decoded); 422 invalid; 429 rate limited or learner queue full (``Retry-After``).
* ``GET /v1/bundles/latest``: 200 ``{"version", "size", "sha256", "url"}`` or 204 before the first bundle.
* ``GET /v1/bundles/{version}``: the bundle bytes (404 when there is no such version).
* ``POST /v1/publish`` (admin token): publish the learner's parameters now; 200 with the bundle's metadata.
* ``GET /healthz``: ``{"status": "ok", "latest_version": int | null, ...learner counters}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from edgetta.cloud.auth import RateLimiter, Tokens, bearer, retry_after
from edgetta.cloud.store import BundleStore
from edgetta.cloud.uploads import UploadError, UploadSpec, gunzip_limited, parse_upload
from edgetta.cloud.worker import LearnerWorker
from edgetta.errors import EdgettaError

log = logging.getLogger("edgetta.cloud")
SEEN_BATCHES = 1024  # per device: batch_seq values remembered to acknowledge a retried upload only once


@dataclass
class Service:
    """Everything the API serves from."""

    spec: UploadSpec
    tokens: Tokens
    store: BundleStore
    worker: LearnerWorker
    limiter: RateLimiter
    seen: dict[str, OrderedDict[int, int]] = field(default_factory=dict)

    def duplicate(self, device: str, batch_seq: int) -> int | None:
        """The count accepted earlier for this device's ``batch_seq``, else None."""
        return self.seen.get(device, OrderedDict()).get(batch_seq)

    def remember(self, device: str, batch_seq: int, count: int) -> None:
        seen = self.seen.setdefault(device, OrderedDict())
        seen[batch_seq] = count
        while len(seen) > SEEN_BATCHES:
            seen.popitem(last=False)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unauthorized(message: str) -> JSONResponse:
    return _error(401, message, {"WWW-Authenticate": "Bearer"})


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) before reading past ``limit`` bytes; a declared Content-Length
    over the limit is refused without reading anything."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise UploadError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
        except ValueError as exc:
            raise UploadError(422, f"Content-Length {declared!r} is not a number") from exc
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over ``service``."""
    app = FastAPI(title="edgetta cloud", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def device_of(request: Request) -> str | None:
        return service.tokens.device_for(bearer(request.headers.get("authorization")))

    @app.post("/v1/samples")
    async def samples(request: Request) -> Response:
        device = device_of(request)
        if device is None:
            return _unauthorized("missing or unknown device token (Authorization: Bearer <token>)")
        wait = service.limiter.acquire(device)
        if wait:
            return _error(429, f"rate limit for device {device!r}", {"Retry-After": retry_after(wait)})
        try:
            body = await read_limited(request, service.spec.max_bytes)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding == "gzip":
                body = await run_in_threadpool(gunzip_limited, body, service.spec.max_bytes)
            elif encoding not in ("", "identity"):
                raise UploadError(422, f"Content-Encoding {encoding!r} is not supported (use gzip or none)")
            upload = await run_in_threadpool(parse_upload, body, service.spec, device)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        earlier = service.duplicate(device, upload.batch_seq)
        if earlier is not None:
            return JSONResponse({"accepted": earlier, "duplicate": True})
        if not service.worker.submit(upload):
            return _error(429, "the learner's queue is full; retry later", {"Retry-After": "5"})
        service.remember(device, upload.batch_seq, upload.count)
        return JSONResponse({"accepted": upload.count})

    @app.get("/v1/bundles/latest")
    async def latest(request: Request) -> Response:
        if device_of(request) is None and not service.tokens.is_admin(bearer(request.headers.get("authorization"))):
            return _unauthorized("missing or unknown token")
        info = service.store.latest
        return Response(status_code=204) if info is None else JSONResponse(info.to_json())

    @app.get("/v1/bundles/{version}")
    async def bundle(version: int, request: Request) -> Response:
        if device_of(request) is None and not service.tokens.is_admin(bearer(request.headers.get("authorization"))):
            return _unauthorized("missing or unknown token")
        path = service.store.path(version)
        if path is None:
            return _error(404, f"no bundle version {version}")
        data = await run_in_threadpool(path.read_bytes)
        return Response(data, media_type="application/octet-stream")

    @app.post("/v1/publish")
    async def publish(request: Request) -> Response:
        token = bearer(request.headers.get("authorization"))
        if not service.tokens.is_admin(token):
            if service.tokens.device_for(token) is not None:
                return _error(403, "publishing needs the admin token, not a device token")
            return _unauthorized("missing or unknown admin token")
        try:
            info = await run_in_threadpool(service.worker.publish)
        except EdgettaError as exc:  # e.g. create_bundle refused non-finite parameters: nothing is published
            log.error("publish refused: %s", exc)
            return _error(500, f"publish refused: {exc}")
        return JSONResponse(info.to_json())

    @app.get("/healthz")
    async def healthz() -> Response:
        worker = service.worker
        latest = service.store.latest
        return JSONResponse(
            {
                "status": "ok" if worker.alive else "learner stopped",
                "latest_version": latest.version if latest else None,
                "samples": worker.samples,
                "steps": worker.steps,
                "queued": worker.queued,
                "learner_error": worker.last_error,
            },
            status_code=200 if worker.alive else 503,
        )

    return app


def uvicorn_server(
    app: FastAPI, host: str, port: int, certfile: str | None = None, keyfile: str | None = None
) -> object:
    """A ``uvicorn.Server`` for ``app`` (TLS when ``certfile``/``keyfile`` are given); not started."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def run(server: object, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until interrupted; ``on_ready`` runs once the socket is listening."""

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and on_ready is not None:
            on_ready()
        await task

    asyncio.run(main())
