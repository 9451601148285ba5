"""`edgetta run` as a real child process: SIGTERM/SIGINT, SIGHUP reloads, one daemon per state_dir, and the
crash test (SIGKILL at random moments, resumed each time, output equal to one uninterrupted run)."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from edgetta.daemon.checkpoint import CheckpointStore
from edgetta.errors import CheckpointError
from tests.daemon_helpers import (
    TENT_RAILS,
    free_port,
    key,
    log_lines,
    records,
    run_cli,
    start_daemon,
    stream_entry,
    wait_for_log,
    write_config,
    write_stream,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def wait_for_lines(path: Path, n: int, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while lines(path) < n:
        assert proc.poll() is None, f"daemon exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"fewer than {n} records after {timeout} s"
        time.sleep(0.02)


def position_of(store: CheckpointStore) -> object:
    """The committed position, read while a daemon may be committing: a manifest read just before a commit
    can name a state the commit's clean-up removes a moment later, so read again."""
    for _ in range(100):
        if not store.exists():
            return None
        try:
            return store.load().position
        except CheckpointError:
            time.sleep(0.01)
    raise AssertionError("the manifest kept naming missing state")


def test_sigterm_drains_checkpoints_and_exits_0_with_a_one_line_summary(tmp_path):
    write_stream(tmp_path / "stream.npz", 20000)
    entry = stream_entry("s0", "stream.npz", "out/s0.jsonl", queue={"size": 100})  # not whole batches
    path = write_config(tmp_path, [entry], log={"format": "json", "level": "info", "file": "edgetta.log"})
    proc = start_daemon(path)
    out = tmp_path / "out/s0.jsonl"
    wait_for_lines(out, 256, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    summary = stdout.decode().strip()
    assert summary.count("\n") == 0 and summary.startswith("edgetta run: stopped by SIGTERM after ")
    assert "s0 (stopped)" in summary and "checkpoints; state in" in summary
    ck = CheckpointStore(tmp_path / "state/streams/s0").load()
    assert ck.clean and ck.output_offset == out.stat().st_size
    written = records(out)
    assert len(written) % 64 == 0 and ck.position == written[-1]["position"]  # whole batches of a recorded stream
    log = log_lines(tmp_path / "state/edgetta.log")
    assert log[-1]["msg"] == "edgetta run: exiting" and log[-1]["reason"] == "stopped by SIGTERM"


def test_a_second_signal_exits_at_once(tmp_path):
    write_stream(tmp_path / "stream.npz", 20000)
    path = write_config(tmp_path)
    proc = start_daemon(path, stderr=tmp_path / "err.log")
    wait_for_lines(tmp_path / "out/s0.jsonl", 128, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # another signal, so the two are not merged into one pending signal
    stdout, _ = proc.communicate(timeout=60)
    err = (tmp_path / "err.log").read_text()
    # Python runs pending handlers in signal-number order, so either may count as the second
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), err[-2000:]
    assert "edgetta run: second SIG" in err and "exiting at once" in err
    assert stdout == b""  # no summary: it did not drain
    CheckpointStore(tmp_path / "state/streams/s0").load()  # the last committed checkpoint is whole


def test_sighup_reloads_safe_keys_and_refuses_the_rest_while_running(tmp_path):
    (tmp_path / "incoming").mkdir()  # a watched, empty image folder: a live stream that waits for files
    entry = {
        "name": "cam",
        "source": {"kind": "images", "path": "incoming", "watch": True, "poll": 0.2},
        "preprocess": {"resize": [28, 28], "color": "gray"},
        "output": {"path": "out/cam.jsonl"},
    }
    path = write_config(tmp_path, [entry], metrics={"host": "127.0.0.1", "port": 0})
    err = tmp_path / "err.log"
    proc = start_daemon(path, stderr=err)
    wait_for_log(err, "edgetta run: started")
    config = yaml.safe_load(path.read_text())

    port = free_port()
    config["checkpoint"]["every_seconds"] = 5
    config["log"]["level"] = "debug"
    config["metrics"]["port"] = port
    path.write_text(yaml.safe_dump(config))
    seen = len(log_lines(err))
    proc.send_signal(signal.SIGHUP)
    reloaded = wait_for_log(err, "config reloaded", after=seen)
    assert reloaded["changed"] == ["log", "checkpoint", "metrics"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"  # the metrics endpoint moved to the new port

    config["adapt"] = {**TENT_RAILS, "batch_size": 32}
    path.write_text(yaml.safe_dump(config))
    seen = len(log_lines(err))
    proc.send_signal(signal.SIGHUP)
    refused = wait_for_log(err, "config reload refused", after=seen)
    assert refused["level"] == "warning" and refused["changed"] == ["adapt"]

    path.write_text("streams: [unclosed\n")
    seen = len(log_lines(err))
    proc.send_signal(signal.SIGHUP)
    assert "not valid YAML" in wait_for_log(err, "config reload refused", after=seen)["msg"]
    time.sleep(0.3)
    assert proc.poll() is None  # still running on the previous config

    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"stopped by SIGINT" in stdout


def test_one_daemon_per_state_dir(tmp_path):
    (tmp_path / "incoming").mkdir()
    entry = {
        "name": "cam",
        "source": {"kind": "images", "path": "incoming", "watch": True},
        "output": {"path": "out/cam.jsonl"},
    }
    path = write_config(tmp_path, [entry])
    err = tmp_path / "err.log"
    proc = start_daemon(path, stderr=err)
    try:
        wait_for_log(err, "edgetta run: started")
        second = run_cli("run", str(path), cwd=tmp_path)
        assert second.returncode == 2
        assert f"is in use by edgetta run (pid {proc.pid})" in second.stderr and "Traceback" not in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_sigkill_at_random_moments_and_resume_equals_one_uninterrupted_run(tmp_path):
    """The crash test: 3,000 rows of the demo stream (wrapping around), Tent with stateful rails (Adam,
    stochastic restore RNG, collapse guard and EMA reset EMAs), checkpoints every 128 items (two batches) or
    second; the child is killed with SIGKILL at random moments (during start-up, between and during batches and
    commits) 12 times and resumed each time; its output must equal one uninterrupted run, record by record."""
    rng = random.Random(8)
    runs = {}
    for name in ("reference", "crashed"):
        folder = tmp_path / name
        folder.mkdir()
        write_stream(folder / "stream.npz", 3000)
        log = {"format": "json", "level": "info", "file": "edgetta.log"}
        runs[name] = write_config(folder, checkpoint={"every_items": 128, "every_seconds": 1}, log=log)
    done = run_cli("run", str(runs["reference"]), cwd=runs["reference"].parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = records(runs["reference"].parent / "out/s0.jsonl")
    assert [r["index"] for r in reference] == list(range(3000))

    folder = runs["crashed"].parent
    out, log, store = (
        folder / "out/s0.jsonl",
        folder / "state/edgetta.log",
        CheckpointStore(folder / "state/streams/s0"),
    )
    kills, mid_run, starts = 0, 0, 0
    while True:
        committed = position_of(store)
        seen = len(log_lines(log))
        proc = start_daemon(runs["crashed"])
        starts += 1
        assert starts < 60, "no progress"
        if kills >= 12:
            stdout, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, stdout
            break
        in_startup = kills % 4 == 1  # one kill in four lands in start-up
        if in_startup:
            time.sleep(rng.uniform(0.0, 0.8))  # somewhere in start-up (or just after)
        else:
            # this run committed progress of its own: the kill lands among batches and commits
            wait_for_log(log, "edgetta run: started", after=seen)
            deadline = time.monotonic() + 60
            while proc.poll() is None and position_of(store) == committed:
                assert time.monotonic() < deadline, "no checkpoint committed"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.12))  # at most one commit more: 12 kills always come before the end
        if proc.poll() is not None:  # finished before the kill
            assert proc.returncode == 0
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        mid_run += int(not in_startup)
        if store.exists():  # whatever the moment, the committed checkpoint is whole and names existing state
            ck = store.load()
            assert out.stat().st_size >= ck.output_offset
    assert kills >= 10 and mid_run >= 8, (kills, mid_run)  # 12 kills, 9 after progress of their own run
    crashed = records(out)
    assert [r["index"] for r in crashed] == list(range(3000))  # every index exactly once
    assert [key(r) for r in crashed] == [key(r) for r in reference]  # identical predictions and entropies
    resumed = [row for row in log_lines(log) if row.get("msg") == "s0: resumed after a crash"]
    assert sum(row["position"] is not None for row in resumed) >= 8  # resumed mid-stream, not from the start
    print(json.dumps({"kills": kills, "starts": starts, "resumed_after_crash": len(resumed)}))
