"""Structured logs: one JSON object per line (``ts``, ``level``, ``logger``, ``msg`` and the fields given
with :func:`log_event`), or plain text; on stderr or in a file. The daemon's and the runtime's loggers
(``edgetta.*``) both go there."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from edgetta.daemon.config import LogConfig

LOGGER = "edgetta"
_HANDLER_FLAG = "_edgetta_daemon"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        row: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        row.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            row["error"] = self.formatException(record.exc_info)
        return json.dumps(row, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7s} {record.getMessage()}" + (f" [{extra}]" if extra else "")


_SAVED: list[tuple[int, bool]] = []  # the edgetta logger's level and propagation before the first setup


def setup_logging(config: LogConfig) -> logging.Logger:
    """(Re)configure the ``edgetta`` logger from ``config``; returns the daemon's logger. :func:`teardown_logging`
    puts the logger back as it was."""
    root = logging.getLogger(LOGGER)
    if not _SAVED:
        _SAVED.append((root.level, root.propagate))
    _remove_handlers(root)
    if config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(config.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    root.propagate = False
    return logging.getLogger(f"{LOGGER}.daemon")


def log_event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields`` (each becomes a key of the JSON line)."""
    logger.log(level, msg, extra={"fields": fields})


def _remove_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            root.removeHandler(handler)
            handler.close()


def teardown_logging() -> None:
    """Remove the daemon's handler and restore the ``edgetta`` logger's level and propagation."""
    root = logging.getLogger(LOGGER)
    _remove_handlers(root)
    if _SAVED:
        root.level, root.propagate = _SAVED.pop()
