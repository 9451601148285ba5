"""The HTTP endpoint of a daemon: ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON; 503 when
unhealthy), served from a background thread on ``metrics.host:metrics.port``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgetta.errors import ConfigError

log = logging.getLogger("edgetta.daemon")


class MetricsServer:
    """Serves ``render()`` (body, content type) at /metrics and ``health()`` (healthy, payload) at /healthz."""

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], tuple[bytes, str]],
        health: Callable[[], tuple[bool, dict]],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, kind, code = *render(), 200
                elif path == "/healthz":
                    healthy, payload = health()
                    body, kind, code = json.dumps(payload).encode(), "application/json", 200 if healthy else 503
                else:
                    body, kind, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port"
            ) from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="edgetta-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
