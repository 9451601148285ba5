"""Shared helpers of the daemon tests (tests/test_daemon*.py): stream files, configs, child processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import edgetta
from edgetta.daemon import Daemon, RunSummary, load_daemon_config

ASSETS = Path(edgetta.__file__).parent / "assets"
REPO = Path(edgetta.__file__).parent.parent

# Tent with rails that keep state of every kind: optimiser moments (Adam), an RNG (stochastic restore),
# EMAs (collapse guard, EMA reset), a window-free BN model at batch 64.
TENT_RAILS: dict[str, Any] = {
    "method": "tent",
    "method_args": {"optimizer": "adam", "lr": 0.001},
    "rails": [
        "nonfinite_guard",
        {"name": "entropy_gate", "e0_fraction": 0.4},
        {"name": "collapse_guard", "threshold": 0.2},
        {"name": "stochastic_restore", "p": 0.05},
        {"name": "ema_reset", "tau": 0.99, "patience": 5},
    ],
    "batch_size": 64,
}


def write_stream(path: Path, n: int = 2000, *, offset: int = 0) -> Path:
    """``n`` rows of the bundled demo stream (wrapping around): uint8 images [n, 1, 28, 28] (the Adapter
    applies the manifest's preprocessing), labels and phases as domains."""
    with np.load(ASSETS / "demo_stream.npz") as data:
        idx = (np.arange(n) + offset) % len(data["labels"])
        np.savez(path, x=data["images"][idx][:, None], y=data["labels"][idx], domain=data["phase"][idx])
    return path


def stream_entry(name: str, path: str, output: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": {"kind": "npz", "path": path}, "output": {"path": output}, **extra}


def write_config(folder: Path, streams: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    """A daemon config in ``folder`` (relative paths resolve there): the bundled artifact, Tent with rails,
    one npz stream ``s0`` reading ``stream.npz`` unless ``streams`` is given; ``top`` overrides keys."""
    config: dict[str, Any] = {
        "artifact": "bundled:fmnist_resnet_bn",
        "adapt": TENT_RAILS,
        "state_dir": "state",
        "checkpoint": {"every_items": 128, "every_seconds": 60},
        "log": {"format": "json", "level": "info"},
        "streams": streams or [stream_entry("s0", "stream.npz", "out/s0.jsonl")],
    }
    config.update(top)
    path = folder / "daemon.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def key(record: dict[str, Any]) -> tuple:
    """What must be identical between an interrupted and an uninterrupted run."""
    return record["index"], record["position"], record["pred"], record["entropy"], record["skip"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m edgetta.cli ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "edgetta.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def start_daemon(config: Path, *args: str, stderr: Path | None = None) -> subprocess.Popen:
    """``edgetta run CONFIG ARGS`` as a child process (stderr, the JSON log, to a file when given)."""
    err = stderr.open("ab") if stderr is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "edgetta.cli", "run", str(config), *args],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=err,
        env=child_env(),
    )


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far (anything else is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_for_log(path: Path, text: str, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
    """The first JSON log line (from line ``after``) whose message contains ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in log_lines(path)[after:]:
            if text in row.get("msg", ""):
                return row
        time.sleep(0.05)
    raise AssertionError(f"no log line containing {text!r} within {timeout} s; log:\n{path.read_text()[-3000:]}")


class Background:
    """A daemon running in a thread (no signal handlers there); ``stop()`` asks it to drain and exit."""

    def __init__(self, config_path: Path, **kwargs: Any) -> None:
        self.daemon = Daemon(load_daemon_config(config_path), **kwargs)
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.daemon.ready.wait(60), "daemon did not start"

    def _run(self) -> None:
        try:
            self.summary = self.daemon.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> RunSummary:
        self.daemon.request_stop("stopped by test")
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def scrape(daemon: Daemon, path: str) -> tuple[int, str]:
    host, port = daemon.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
