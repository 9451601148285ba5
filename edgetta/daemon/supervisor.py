"""The daemon: builds one worker per stream, runs them from one processing thread, handles signals.

Streams of the same artifact (and engine options) share one engine; each has its own Adapter, reader
thread, queue, outputs and checkpoints. The processing thread takes each stream's queued items in turn, so
the shared engine is never called from two threads. SIGTERM/SIGINT drain and checkpoint every stream and
exit 0; a second one exits at once (the last committed checkpoints stay valid). SIGHUP reloads the config
file when only ``log``, ``checkpoint`` or ``health`` changed and refuses (logged) otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetta.daemon.config import DaemonConfig, load_daemon_config, reload_diff
from edgetta.daemon.health import evaluate
from edgetta.daemon.logs import log_event, setup_logging, teardown_logging
from edgetta.daemon.metrics import make_metrics
from edgetta.daemon.sources import SourceOpener, open_stream_source
from edgetta.daemon.stream import StreamWorker
from edgetta.errors import CheckpointError, ConfigError, EdgettaError

IDLE_WAIT = 0.05  # seconds the processing thread sleeps when no stream has work


@dataclass
class RunSummary:
    """How a daemon run ended and what each stream did."""

    reason: str
    exit_code: int
    seconds: float
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self, state_dir: Path) -> str:
        parts = []
        for name, s in self.streams.items():
            state = s.get("state", "")
            sync = s.get("sync")
            synced = ""
            if sync:
                synced = (
                    f", sync: {sync['queue_uploaded']} uploaded of {sync['seen']} seen, {sync['queued']} queued, "
                    f"bundle {sync['bundle_version']}"
                )
            parts.append(
                f"{name} ({state}) {s['processed']} processed, {s['skipped']} skipped, {s['updates']} updates, "
                f"{s['resets']} resets, {s['dropped']} dropped, {s['checkpoints']} checkpoints{synced}"
            )
        return f"edgetta run: {self.reason} after {self.seconds:.1f} s; " + "; ".join(parts) + f"; state in {state_dir}"


class StateLock:
    """One daemon per state_dir: an exclusive lock on ``<state_dir>/daemon.lock`` (released on any exit)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self.handle: Any = None

    def acquire(self) -> None:
        self.handle = self.path.open("a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise ConfigError(
                f"state_dir {self.path.parent} is in use by edgetta run (pid {holder}); give each daemon its own "
                "state_dir"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.close()


class Daemon:
    """``edgetta run``. ``resume``: True requires a checkpoint for every stream (``--resume``), False starts
    over (``--fresh``), None resumes the streams that have one. ``max_items``: each stream ends after that
    many items of this run. ``open_source``: how a stream's source is opened (default: the source factory, see
    :func:`edgetta.daemon.sources.open_stream_source`); a program embedding the daemon may bring its own."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        resume: bool | None = None,
        max_items: int | None = None,
        open_source: SourceOpener = open_stream_source,
    ) -> None:
        self.config = config
        self.open_source = open_source
        self.resume = resume
        self.max_items = max_items
        self.wake = threading.Event()
        self.workers: list[StreamWorker] = []
        self.sync: Any = None  # edgetta.sync._edge_sync.EdgeSync with a sync block
        self.server: Any = None
        self._stop_reason: str | None = None
        self._reload = False
        self._started = time.monotonic()
        self.ready = threading.Event()
        self.log = logging.getLogger("edgetta.daemon")
        self.metrics = make_metrics(config.metrics is not None)

    # -- control (signal handlers and tests) ---------------------------------------------------------
    def request_stop(self, reason: str = "stopped") -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self.wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self.wake.set()

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.server is None else self.server.address

    def health(self) -> tuple[bool, dict]:
        return evaluate([w.status for w in self.workers], self.config.health)

    # -- setup ---------------------------------------------------------------------------------------
    def _build_workers(self) -> None:
        from edgetta.contract import load_artifact
        from edgetta.engines import OrtEngine
        from edgetta.runtime.adapter import Adapter

        artifacts: dict[Path, Any] = {}
        engines: dict[tuple[Path, str], Any] = {}
        for s in self.config.streams:
            key = s.artifact.resolve()
            if key not in artifacts:
                artifacts[key] = load_artifact(key)
            options = s.adapt.engine
            engine_key = (key, json.dumps(options.__dict__, sort_keys=True, default=str))
            if engine_key not in engines:
                engines[engine_key] = OrtEngine(artifacts[key], options)
            adapter = Adapter(artifacts[key], s.adapt, engine=engines[engine_key])
            self.workers.append(
                StreamWorker(
                    s,
                    adapter,
                    state_dir=self.config.state_dir,
                    checkpoint=self.config.checkpoint,
                    metrics=self.metrics,
                    log=self.log,
                    wake=self.wake,
                    max_items=self.max_items,
                    open_source=self.open_source,
                )
            )
        self.engines = len(engines)

    def _prepare(self) -> None:
        for w in self.workers:
            if self.resume is True and not w.store.exists():
                raise CheckpointError(
                    f"--resume: stream {w.name} has no checkpoint in {w.store.folder}; run without --resume to start it"
                )
            w.prepare(resume=self.resume is not False)
        if self.config.sync is not None:
            from edgetta.sync._edge_sync import build_edge_sync

            worker = next(w for w in self.workers if w.name == self.config.sync.stream)
            self.sync = build_edge_sync(self.config.sync, self.config.state_dir, worker.adapter, self.metrics, self.log)
            worker.sync = self.sync
            self.sync.resume()

    def _start_server(self) -> None:
        if self.config.metrics is None:
            return
        from edgetta.daemon.server import MetricsServer

        m = self.config.metrics
        self.server = MetricsServer(m.host, m.port, self.metrics.render, self.health)
        self.server.start()
        host, port = self.server.address
        log_event(self.log, logging.INFO, f"metrics on http://{host}:{port}/metrics", host=host, port=port)

    def _move_server(self, host: str, port: int) -> None:
        """Serve /metrics and /healthz at a new address (the old one closes once the new one listens)."""
        from edgetta.daemon.server import MetricsServer

        server = MetricsServer(host, port, self.metrics.render, self.health)
        server.start()
        old, self.server = self.server, server
        if old is not None:
            old.stop()
        host, port = server.address
        log_event(self.log, logging.INFO, f"metrics on http://{host}:{port}/metrics", host=host, port=port)

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []

        def stop(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop_reason is not None:
                os.write(2, f"edgetta run: second {name}: exiting at once (last checkpoints kept)\n".encode())
                os._exit(128 + signum)
            self.request_stop(f"stopped by {name}")

        def hup(signum: int, frame: Any) -> None:
            self.request_reload()

        saved = []
        for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (getattr(signal, "SIGHUP", None), hup)):
            if sig is not None:
                saved.append((sig, signal.signal(sig, handler)))
        return saved

    # -- run -----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run until every stream ended or a stop was requested; returns the summary (not printed)."""
        state = self.config.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"state_dir: cannot create {state} ({exc.strerror or exc}); choose a writable path"
            ) from None
        lock = StateLock(state)
        lock.acquire()
        saved: list[tuple[int, Any]] = []
        try:
            self.log = setup_logging(self.config.log)
            saved = self._install_signals()
            self._build_workers()
            self._prepare()
            for w in self.workers:
                w.open()
            self._start_server()
            for w in self.workers:
                w.start()
            if self.sync is not None:
                self.sync.start()
            log_event(
                self.log,
                logging.INFO,
                "edgetta run: started",
                pid=os.getpid(),
                streams=[w.name for w in self.workers],
                engines=self.engines,
                state_dir=str(state),
                config=str(self.config.path) if self.config.path else None,
            )
            self.ready.set()
            self._loop()
            return self._shutdown()
        finally:
            for sig, handler in saved:
                signal.signal(sig, handler)
            if self.sync is not None:
                self.sync.stop()
            for w in self.workers:
                w.close()
            if self.server is not None:
                self.server.stop()
            lock.release()
            teardown_logging()

    def _loop(self) -> None:
        while self._stop_reason is None:
            if self._reload:
                self._reload = False
                self._apply_reload()
            self.wake.clear()
            now = time.monotonic()
            worked = False
            for w in self.workers:
                try:
                    worked = w.step(now) or worked
                    if w.active and w.due(now):
                        w.checkpoint()
                except EdgettaError as exc:
                    w.fail(str(exc))
                except Exception as exc:  # a bug or a broken device library: this stream stops, not the rest
                    self.log.exception("stream %s: unexpected error", w.name, extra={"fields": {"stream": w.name}})
                    w.fail(f"{type(exc).__name__}: {exc}")
            if not any(w.active for w in self.workers):
                return
            if not worked:
                self.wake.wait(IDLE_WAIT)

    def _shutdown(self) -> RunSummary:
        reason = self._stop_reason or "all streams ended"
        for w in self.workers:
            try:
                w.drain()
            except Exception as exc:
                self.log.exception("stream %s: could not drain", w.name, extra={"fields": {"stream": w.name}})
                w.fail(f"drain: {type(exc).__name__}: {exc}")
        failed = [w.name for w in self.workers if w.status.state == "failed"]
        code = 0 if self._stop_reason or not failed else 1
        summary = RunSummary(reason, code, time.monotonic() - self._started)
        for w in self.workers:
            summary.streams[w.name] = {"state": w.status.state, **w.totals()}
            if w.status.reason:
                summary.streams[w.name]["reason"] = w.status.reason
            if w.sync is not None:
                summary.streams[w.name]["sync"] = w.sync.counts()
        log_event(
            self.log, logging.INFO, "edgetta run: exiting", reason=reason, exit_code=code, streams=summary.streams
        )
        return summary

    # -- SIGHUP ------------------------------------------------------------------------------------------
    def _apply_reload(self) -> None:
        path = self.config.path
        if path is None:
            log_event(self.log, logging.WARNING, "config reload refused: this daemon was not started from a file")
            return
        try:
            new = load_daemon_config(path)
        except EdgettaError as exc:
            log_event(self.log, logging.WARNING, f"config reload refused: {exc}", config=str(path))
            return
        unsafe = reload_diff(self.config, new)
        if unsafe:
            log_event(
                self.log,
                logging.WARNING,
                f"config reload refused: {', '.join(unsafe)} changed, which needs a restart; still running with the "
                "previous config",
                changed=unsafe,
                config=str(path),
            )
            return
        changed = [k for k in ("log", "checkpoint", "health", "metrics") if getattr(new, k) != getattr(self.config, k)]
        if "metrics" in changed and new.metrics is not None:
            try:
                self._move_server(new.metrics.host, new.metrics.port)
            except EdgettaError as exc:
                log_event(self.log, logging.WARNING, f"config reload refused: {exc}", config=str(path))
                return
        self.config = new
        if "log" in changed:
            self.log = setup_logging(new.log)
            for w in self.workers:
                w.log = self.log
        for w in self.workers:
            w.cadence = new.checkpoint
        log_event(self.log, logging.INFO, "config reloaded", changed=changed, config=str(path))


def run_daemon(config_path: str | Path, *, resume: bool | None = None, max_items: int | None = None) -> int:
    """``edgetta run CONFIG``: load, run, print the one-line summary; returns the exit code."""
    config = load_daemon_config(config_path)
    daemon = Daemon(config, resume=resume, max_items=max_items)
    summary = daemon.run()
    to_stderr = any(s.output.format == "stdout" for s in config.streams)
    print(summary.line(config.state_dir), file=sys.stderr if to_stderr else sys.stdout, flush=True)
    return summary.exit_code
