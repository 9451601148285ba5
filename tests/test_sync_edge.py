"""The device side of cloud-edge sync: CEMA selection, the on-disk upload queue, the uploader against a real HTTP
server that fails and recovers, the bundle poller, and the daemon with a ``sync:`` block."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from edgetta.errors import ConfigError
from edgetta.streams.backoff import Backoff
from edgetta.sync._edge_client import SyncClient
from edgetta.sync.queue import UploadQueue
from edgetta.sync.selection import CemaSelector, SelectionConfig, entropy_from_logits
from edgetta.sync.uploader import Uploader

LN10 = math.log(10)
REPO = Path(__file__).resolve().parent.parent


# -- selection ---------------------------------------------------------------------------------------------
def test_static_threshold_before_warmup_and_entropy_floor() -> None:
    sel = CemaSelector(10, SelectionConfig(warmup=10_000))
    d = sel.select(entropy=np.array([0.01, 0.5, 0.95, 1.5, np.nan]))
    assert d.threshold == pytest.approx(0.4 * LN10)  # 0.921 nats
    assert d.keep.tolist() == [False, True, False, False, False]
    assert d.reasons == ["low_informative", None, "unreliable", "unreliable", "non_finite"]
    assert sel.counts() == {
        "seen": 5,
        "selected": 1,
        "excluded_unreliable": 2,
        "excluded_low_informative": 1,
        "excluded_redundant": 0,
        "excluded_non_finite": 1,
    }
    assert sel.e_min == pytest.approx(0.02 * LN10)


def test_dynamic_threshold_follows_the_running_entropy() -> None:
    sel = CemaSelector(10, SelectionConfig(warmup=4))
    first = sel.select(entropy=np.full(4, 0.5))
    # warm-up ends with this batch: E_max = 0.4 ln C * 0.6 * (0.5 / 0.5)
    assert first.threshold == pytest.approx(0.4 * LN10 * 0.6)
    assert first.keep.all()
    second = sel.select(entropy=np.array([0.7, 0.7, 0.9, 0.9]))
    running = (4 * 0.5 + 1.4 + 1.8) / 8  # 0.65: a harder stream raises the bar
    assert second.threshold == pytest.approx(0.4 * LN10 * 0.6 * running / 0.5)  # 0.718
    assert second.keep.tolist() == [True, True, False, False]
    easier = sel.select(entropy=np.full(8, 0.1))
    assert easier.threshold < first.threshold  # an easier stream lowers it


def test_redundancy_filter_and_state_round_trip() -> None:
    cfg = SelectionConfig(warmup=10_000, eps=0.4)
    sel = CemaSelector(10, cfg)
    logits = np.zeros((3, 10))
    logits[:, 0] = 5.0  # three identical, confident (H = 0.35 nats) predictions of class 0
    first = sel.select(logits)
    assert first.keep.all()  # the running mean prediction starts from this batch
    again = sel.select(logits.copy())
    assert again.reasons == ["redundant"] * 3
    other = np.zeros((1, 10))
    other[0, 5] = 5.0
    assert sel.select(other).keep.tolist() == [True]  # another class is not redundant
    restored = CemaSelector(10, cfg)
    restored.load_state(json.loads(json.dumps(sel.state())))
    assert restored.counts() == sel.counts()
    assert restored.select(logits.copy()).reasons == sel.select(logits.copy()).reasons
    p, h = entropy_from_logits(np.zeros((1, 10)))
    assert h[0] == pytest.approx(LN10) and p.sum() == pytest.approx(1.0)


# -- queue -------------------------------------------------------------------------------------------------
def _rows(n: int, start: int = 0) -> list[np.ndarray]:
    return [np.full((1, 4, 4), start + i, np.float32) for i in range(n)]


def test_queue_fifo_bounds_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = UploadQueue(path, max_rows=5, max_bytes=10_000)
    assert q.put(_rows(3), [0.1, 0.2, 0.3]) == 0
    assert q.put(_rows(4, start=3)) == 2  # drop_oldest: rows 0 and 1 go
    got = q.peek(10)
    assert [int(s.x[0, 0, 0]) for s in got] == [2, 3, 4, 5, 6]
    assert got[0].entropy == pytest.approx(0.3) and got[1].entropy is None
    q.ack([got[0].id, got[1].id])
    q.put(_rows(1, start=7), meta={"selector": {"n": 7}})
    q.close()
    again = UploadQueue(path, max_rows=5, max_bytes=10_000)
    assert [int(s.x[0, 0, 0]) for s in again.peek(10)] == [4, 5, 6, 7]
    assert again.counters() == {"enqueued": 8, "uploaded": 2, "dropped_full": 2, "refused": 0}
    assert again.get_meta("selector") == {"n": 7}
    assert len(again) == 4 and again.nbytes == 4 * 64


def test_queue_drop_newest_and_byte_bound(tmp_path: Path) -> None:
    q = UploadQueue(tmp_path / "q.sqlite", max_rows=100, max_bytes=3 * 64, policy="drop_newest")
    assert q.put(_rows(5)) == 2  # three rows of 64 bytes fit, the two newest are refused
    assert [int(s.x[0, 0, 0]) for s in q.peek(10)] == [0, 1, 2]
    assert q.counters()["dropped_full"] == 2
    q2 = UploadQueue(tmp_path / "q2.sqlite", max_rows=100, max_bytes=3 * 64)
    q2.put(_rows(2))
    assert q2.put(_rows(2, start=2)) == 1  # bytes bound: the oldest row goes
    assert [int(s.x[0, 0, 0]) for s in q2.peek(10)] == [1, 2, 3]
    with pytest.raises(ConfigError, match="policy"):
        UploadQueue(tmp_path / "q3.sqlite", policy="drop_random")


WRITER = """
import sys, numpy as np
from edgetta.sync.queue import UploadQueue
q = UploadQueue(sys.argv[1], max_rows=100000, max_bytes=2**30)
i = 0
while True:
    q.put([np.full((1, 28, 28), i, np.float32)] * 8, [0.5] * 8, meta={"batches": i + 1})
    i += 1
    print(i, flush=True)
"""


def test_queue_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 40:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with sqlite3.connect(str(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    q = UploadQueue(path, max_rows=100000, max_bytes=2**30)
    batches = q.get_meta("batches")
    assert batches >= committed  # every batch it reported committed is there (one more may have landed)
    assert len(q) == 8 * batches  # no torn batch: rows and meta were written in one transaction
    values = [int(s.x[0, 0, 0]) for s in q.peek(100000)]
    assert values == [v for v in range(batches) for _ in range(8)]
    q.put(_rows(1))  # and it takes new rows
    assert len(q) == 8 * batches + 1


# -- a real HTTP server that fails, then recovers --------------------------------------------------------------
class FakeCloud:
    """An HTTP server speaking the sync API: checks the bearer token, refuses uploads with 503 while ``down``."""

    def __init__(self, token: str = "tok-1", port: int = 0) -> None:
        self.token = token
        self.down = False
        self.max_rows = 10_000  # more rows in one upload: 413
        self.refuse: int | None = None  # answer every upload with this status (422, 429)
        self.uploads: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.bundle: bytes | None = None
        self.bundle_version = 0
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                cloud.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {cloud.token}":
                    self._reply(401, b'{"detail": "missing or wrong token"}')
                    return False
                return True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._authorised():
                    return
                if cloud.down:
                    self._reply(503, b'{"detail": "down"}')
                    return
                if cloud.refuse == 429:
                    cloud.statuses.append(429)
                    self.send_response(429)
                    self.send_header("Retry-After", "0.2")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if cloud.refuse is not None:
                    self._reply(cloud.refuse, b'{"detail": "x has shape [1, 4, 4], expected [1, 28, 28]"}')
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                from safetensors import safe_open  # noqa: F401  (metadata is read below)

                header_len = int.from_bytes(body[:8], "little")
                meta = json.loads(body[8 : 8 + header_len])["__metadata__"]
                tensors = st_load(body)
                if len(tensors["x"]) > cloud.max_rows:
                    self._reply(413, b'{"detail": "too many samples"}')
                    return
                cloud.uploads.append({"meta": meta, **tensors})
                self._reply(200, json.dumps({"accepted": len(tensors["x"])}).encode())

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path == "/v1/bundles/latest":
                    if cloud.bundle is None:
                        self._reply(204)
                        return
                    info = {"version": cloud.bundle_version, "size": len(cloud.bundle), "sha256": "", "url": "/v1/b"}
                    self._reply(200, json.dumps(info).encode())
                elif self.path == "/v1/b" and cloud.bundle is not None:
                    self._reply(200, cloud.bundle, "application/octet-stream")
                else:
                    self._reply(404, b'{"detail": "no such thing"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> np.ndarray:
        return np.concatenate([u["x"] for u in self.uploads]) if self.uploads else np.zeros((0,))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloud() -> Any:
    server = FakeCloud()
    yield server
    server.close()


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_uploader_backs_off_while_down_then_catches_up(tmp_path: Path, cloud: FakeCloud) -> None:
    q = UploadQueue(tmp_path / "q.sqlite")
    q.put(_rows(50), [0.3] * 50)
    cloud.down = True
    reports: list[tuple[str, dict]] = []
    up = Uploader(
        q,
        SyncClient(cloud.url, "tok-1"),
        device_id="dev-1",
        base_sha256="ab" * 32,
        batch_rows=16,
        idle=0.05,
        backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.5, seed=1),
        report=lambda kind, msg, fields: reports.append((kind, fields)),
    )
    up.start()
    try:
        wait_until(lambda: up.failures >= 3)
        assert len(q) == 50 and not cloud.uploads  # nothing lost while the server is down
        waits = [up.backoff.delay(k) for k in range(6)]
        assert max(waits) <= 0.2 * 1.5 and waits[0] < 0.2  # exponential with jitter, bounded
        q.put(_rows(10, start=50), [0.3] * 10)  # the device goes on queueing
        cloud.down = False
        wait_until(lambda: len(q) == 0)
    finally:
        up.stop()
    x = cloud.received()
    assert sorted(int(v) for v in x[:, 0, 0, 0]) == list(range(60))  # every row once, none lost
    metas = [u["meta"] for u in cloud.uploads]
    assert {m["device_id"] for m in metas} == {"dev-1"} and {m["base_sha256"] for m in metas} == {"ab" * 32}
    seqs = [int(m["batch_seq"]) for m in metas]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 1_700_000_000_000  # from the clock (ms)
    assert q.get_meta("batch_seq") == seqs[-1]
    assert all(len(u["x"]) <= 16 and u["entropy"].dtype == np.float32 for u in cloud.uploads)
    kinds = [k for k, _ in reports]
    assert "upload_failed" in kinds and "upload_recovered" in kinds
    assert q.counters()["uploaded"] == 60 and up.bytes_up > 0


def test_uploader_halves_too_large_batches_and_drops_refused_data(tmp_path: Path, cloud: FakeCloud) -> None:
    q = UploadQueue(tmp_path / "q.sqlite")
    q.put(_rows(5))
    cloud.max_rows = 2
    reports: list[str] = []
    up = Uploader(
        q,
        SyncClient(cloud.url, "tok-1"),
        device_id="d",
        base_sha256="0" * 64,
        batch_rows=8,
        idle=0.05,
        report=lambda kind, msg, fields: reports.append(kind),
    )
    up.start()
    try:
        wait_until(lambda: len(q) == 0)
    finally:
        up.stop()
    assert sorted(int(v) for v in cloud.received()[:, 0, 0, 0]) == [0, 1, 2, 3, 4]  # 413: halved until it fits
    assert 413 in cloud.statuses and all(len(u["x"]) <= 2 for u in cloud.uploads)
    slow = Backoff(initial=5.0, maximum=10.0)  # its own pace would be 5 s; the server asks for 0.2 s
    up = Uploader(
        q, SyncClient(cloud.url, "tok-1"), device_id="d", base_sha256="0" * 64, report=up.report, backoff=slow
    )
    cloud.refuse = 422  # the server refuses the data itself: dropped, counted, never retried
    q.put(_rows(3))
    assert up.send(q.peek(10)) == "dropped"
    assert len(q) == 0 and q.counters()["refused"] == 3 and reports[-1] == "upload_refused"
    cloud.refuse = 429  # rate limited: waits the server's Retry-After, keeps the rows
    q.put(_rows(2))
    started = time.monotonic()
    assert up.send(q.peek(10)) == "retry"
    assert 0.2 <= time.monotonic() - started < 2.0 and len(q) == 2


def test_the_poller_polls_with_jitter(cloud: FakeCloud) -> None:
    from edgetta.sync.poller import Poller

    poller = Poller(SyncClient(cloud.url, "tok-1"), lambda data, applied: None, lambda: None, interval=10, seed=3)
    delays = [poller.next_delay() for _ in range(200)]
    assert 8.0 <= min(delays) < 8.5 and 11.5 < max(delays) <= 12.0  # 10 s +- 20 %, spread over the range
    assert poller.poll_once() and cloud.statuses == [204]  # nothing published yet: nothing fetched


def test_uploader_with_a_wrong_token_keeps_the_rows(tmp_path: Path, cloud: FakeCloud) -> None:
    q = UploadQueue(tmp_path / "q.sqlite")
    q.put(_rows(3))
    up = Uploader(q, SyncClient(cloud.url, "wrong"), device_id="d", base_sha256="0" * 64, backoff=Backoff(0.05, 0.05))
    assert up.send(q.peek(10)) == "retry"
    assert cloud.statuses == [401] and len(q) == 3 and up.counters["unauthorized"] == 1
    assert "401" in up.last_error


# -- the daemon with a sync block --------------------------------------------------------------------------
class GatedLive:
    """A live source (like a camera) that yields the demo images only as the test releases them."""

    live = True
    preprocessor = None

    def __init__(self, start: int = 0) -> None:
        self.name = "gated"
        self.start = start
        self.allowed = 0
        self.closed = threading.Event()
        self.cond = threading.Condition()
        from tests.daemon_helpers import ASSETS

        with np.load(ASSETS / "demo_stream.npz") as data:
            self.images = data["images"][:, None]

    def release(self, n: int) -> None:
        with self.cond:
            self.allowed += n
            self.cond.notify_all()

    def __iter__(self) -> Any:
        from edgetta.streams.items import Item

        i = self.start
        self.allowed += self.start
        while not self.closed.is_set():
            with self.cond:
                while i >= self.allowed and not self.closed.is_set():
                    self.cond.wait(0.1)
            if self.closed.is_set():
                return
            yield Item(self.images[i % len(self.images)], position=i)
            i += 1

    def close(self) -> None:
        self.closed.set()


def sync_config(tmp_path: Path, cloud: FakeCloud, *, upload: dict | None = None, **sync: Any) -> Path:
    from edgetta.sync.keys import generate_keypair
    from tests.daemon_helpers import free_port, write_config

    if not (tmp_path / "keys" / "public.pem").exists():
        generate_keypair(tmp_path / "keys")
    (tmp_path / "device.token").write_text(cloud.token + "\n")
    block = {
        "server": cloud.url,
        "device_id": "cam-1",
        "token_file": "device.token",
        "trust": ["keys/public.pem"],
        "upload": {"policy": "all", "batch_rows": 32, "idle_seconds": 0.05, "backoff": {"initial": 0.05, "max": 0.2}}
        | (upload or {}),
        "poll": {"interval": 0.1, "jitter": 0.1},
        **sync,
    }
    entry = {"name": "cam", "source": {"kind": "camera", "device": 0}, "output": {"path": "out/cam.jsonl"}}
    entry |= {"flush_after": 0.05, "output": {"path": "out/cam.jsonl", "events": "out/cam.events.jsonl"}}
    return write_config(
        tmp_path,
        [entry],
        adapt={"preset": "bn", "batch_size": 16},
        metrics={"host": "127.0.0.1", "port": free_port()},
        sync=block,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_daemon_keeps_predicting_while_the_cloud_is_down_and_the_queue_catches_up(tmp_path: Path, cloud: FakeCloud):
    """The server is killed: the device goes on predicting and queueing; the queue outlives a restart of the
    device too, and drains once a server answers on the same address again."""
    from tests.daemon_helpers import Background, scrape

    config = sync_config(tmp_path, cloud)
    port = cloud.server.server_address[1]
    cloud.close()  # the server is gone: connections are refused
    source = GatedLive()
    bg = Background(config, open_source=lambda *a, **k: source)
    out = tmp_path / "out/cam.jsonl"
    try:
        source.release(64)
        wait_until(lambda: len(lines(out)) == 64)  # predictions go on while no upload succeeds
        wait_until(lambda: bg.daemon.sync.uploader.failures >= 2)
        assert len(bg.daemon.sync.queue) == 64
    finally:
        bg.stop()
    assert (tmp_path / "state/sync/queue.sqlite").is_file()
    source = GatedLive(start=64)
    bg = Background(config, open_source=lambda *a, **k: source)  # the device restarts, the server is still down
    revived = None
    try:
        sync = bg.daemon.sync
        assert len(sync.queue) == 64  # the queue survived the restart
        source.release(16)
        wait_until(lambda: len(lines(out)) == 80)
        revived = FakeCloud(port=port)  # a server answers again on the same address
        wait_until(lambda: len(sync.queue) == 0)
        source.release(16)
        wait_until(lambda: len(revived.received()) == 96)
        uploaded = 'edgetta_sync_samples_total{outcome="uploaded"} 96.0'
        wait_until(lambda: uploaded in scrape(bg.daemon, "/metrics")[1])  # counted right after the server's 200
        status, text = scrape(bg.daemon, "/metrics")
        assert 'edgetta_sync_samples_total{outcome="seen"} 32.0' in text  # this run's inputs
        assert "edgetta_sync_queue_depth 0.0" in text and "edgetta_sync_bundle_version -1.0" in text
        assert 'edgetta_sync_failures_total{stage="upload"}' in text
    finally:
        summary = bg.stop()
        if revived is not None:
            got = revived.received()
            revived.close()
    assert summary.streams["cam"]["processed"] == 96  # totals carry over the restart
    assert "sync: 96 uploaded of 96 seen, 0 queued, bundle None" in summary.line(tmp_path / "state")
    assert summary.streams["cam"]["sync"]["queue_uploaded"] == 96 and summary.streams["cam"]["sync"]["seen"] == 96
    # every uploaded row is the model input of a processed image (uint8 frames after the manifest's preprocessing)
    from tests.daemon_helpers import ASSETS

    with np.load(ASSETS / "demo_stream.npz") as data:
        expected = (data["images"][:96, None].astype(np.float32) / 255.0 - 0.286) / 0.353
    assert got.shape == (96, 1, 28, 28) and np.allclose(
        np.sort(got.sum(axis=(1, 2, 3))), np.sort(expected.sum(axis=(1, 2, 3))), atol=1e-2
    )


def _bundle_params(artifact: Any, scale: float) -> dict[str, np.ndarray]:
    out = {}
    for name in artifact.trainable_names:
        value = artifact.params[name]
        out[name] = (value * scale if name.endswith("weight") else value + 0.01).astype(np.float32)
    return out


def test_daemon_applies_a_signed_bundle_refuses_bad_ones_and_resumes_on_it(tmp_path: Path, cloud: FakeCloud):
    from edgetta.contract import load_artifact
    from edgetta.daemon.checkpoint import CheckpointStore
    from edgetta.sync.bundle import create_bundle
    from edgetta.sync.keys import generate_keypair
    from tests.daemon_helpers import Background, scrape

    config = sync_config(tmp_path, cloud, upload={"policy": "none"})
    artifact = load_artifact(REPO / "edgetta/assets/fmnist_resnet_bn")
    generate_keypair(tmp_path / "other")
    key = tmp_path / "keys/private.pem"

    def offer(version: int, params: dict, signer: Path = key) -> None:
        cloud.bundle = create_bundle(artifact, params, version=version, private_key=signer)
        cloud.bundle_version = version

    good = _bundle_params(artifact, 1.02)
    offer(3, good)
    source = GatedLive()
    bg = Background(config, open_source=lambda *a, **k: source)
    events = tmp_path / "out/cam.events.jsonl"
    try:
        source.release(32)
        wait_until(lambda: bg.daemon.sync.version == 3)
        adapter = bg.daemon.workers[0].adapter
        for name, value in good.items():
            assert np.array_equal(adapter.state.source[name], value)
        store = CheckpointStore(tmp_path / "state/streams/cam")
        wait_until(lambda: store.load().sync == {"bundle_version": 3})  # committed with the state made on it
        assert [e["version"] for e in lines(events) if e.get("kind") == "bundle_applied"] == [3]
        # an older bundle (rollback), validly signed, is not even fetched
        downloads = bg.daemon.sync.poller.counters["downloads"]
        offer(2, _bundle_params(artifact, 1.05))
        time.sleep(0.5)
        assert bg.daemon.sync.poller.counters["downloads"] == downloads
        # a newer bundle signed by a key the device does not trust
        offer(4, _bundle_params(artifact, 1.05), signer=tmp_path / "other/private.pem")
        wait_until(lambda: any(e.get("kind") == "bundle_rejected" for e in lines(events)))
        rejected = [e for e in lines(events) if e.get("kind") == "bundle_rejected"]
        assert rejected[0]["code"] == "unknown_key" and rejected[0]["rail"] == "sync"
        # signed and well-formed, but its norm layers flatten every feature: the health check refuses it
        offer(5, {k: (np.zeros_like(v) if k.endswith("weight") else v) for k, v in good.items()})
        source.release(32)
        wait_until(lambda: any(e.get("code") == "entropy" for e in lines(events)))
        assert bg.daemon.sync.version == 3  # still on the last good parameters
        for name, value in good.items():
            assert np.array_equal(adapter.state.source[name], value)
        status, text = scrape(bg.daemon, "/metrics")
        assert "edgetta_sync_bundle_version 3.0" in text
        assert 'edgetta_sync_bundle_rejects_total{code="unknown_key"} 1.0' in text
        assert 'edgetta_sync_bundle_rejects_total{code="entropy"} 1.0' in text
    finally:
        bg.stop()
    cloud.bundle = None
    source = GatedLive()
    bg = Background(config, open_source=lambda *a, **k: source)
    try:
        assert bg.daemon.sync.version == 3
        adapter = bg.daemon.workers[0].adapter
        for name, value in good.items():
            assert np.array_equal(adapter.state.source[name], value)
    finally:
        bg.stop()


# -- the sync block of a daemon config ----------------------------------------------------------------------
def _deploy_example(tmp_path: Path, **sync_changes: Any) -> Path:
    import yaml

    from edgetta.sync.keys import generate_keypair

    data = yaml.safe_load((REPO / "configs/daemon-sync.yaml").read_text())
    data["sync"].update(sync_changes)
    for key in [k for k, v in sync_changes.items() if v is None]:
        del data["sync"][key]
    if not (tmp_path / "keys/public.pem").exists():
        generate_keypair(tmp_path / "keys")
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets/cam0.token").write_text("0123456789abcdef-cam0\n")
    path = tmp_path / "daemon-sync.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_example_sync_config_loads(tmp_path: Path) -> None:
    from edgetta.daemon import load_daemon_config

    config = load_daemon_config(_deploy_example(tmp_path))
    sync = config.sync
    sync.check_files()
    assert sync.stream == "cam0" and sync.read_token() == "0123456789abcdef-cam0" and "0123" not in repr(sync)
    assert sync.upload.policy == "cema" and sync.upload.selection.lam == 0.6 and sync.upload.selection.warmup == 512
    assert sync.trust == (tmp_path / "keys/public.pem",) and sync.queue.policy == "drop_oldest"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server": "ftp://x"}, "sync.server: must be an http"),
        ({"device_id": "a b"}, "sync.device_id: must be 1-64"),
        ({"token": "abc"}, "sync: give exactly one of token or token_file"),
        ({"token_file": "secrets/missing.token"}, "sync.token_file: cannot read"),
        ({"trust": ["keys/nope.pem"]}, "sync.trust: "),
        ({"trust": []}, "sync.trust: must be a public key file"),
        ({"stream": "cam9"}, "sync.stream: 'cam9' is not a stream"),
        ({"upload": {"policy": "some"}}, "sync.upload.policy: must be one of cema, all, random, none"),
        ({"upload": {"e_min": 0.5}}, "sync.upload.e_min: 0.5 must be below e_max"),
        ({"upload": {"lamda": 0.6}}, "sync.upload.lamda: unknown key"),
        ({"poll": {"interval": 0}}, "sync.poll.interval: must be a number > 0"),
        ({"queue": {"policy": "drop_all"}}, "sync.queue.policy: must be one of drop_oldest, drop_newest"),
        ({"apply": {"max_class_fraction": 2}}, "sync.apply.max_class_fraction: must be a number"),
        ({"apply": {"min_rows": 100}}, "sync.apply.min_rows: 100 is more than health_window 64"),
        ({"tls": True}, "sync.tls: unknown key"),
    ],
)
def test_sync_config_errors_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    from edgetta.daemon import load_daemon_config

    with pytest.raises(ConfigError) as err:
        load_daemon_config(_deploy_example(tmp_path, **change)).sync.check_files()  # files: checked at start
    assert message in str(err.value)


def test_an_edge_killed_mid_apply_comes_back_on_a_consistent_slot(tmp_path: Path, cloud: FakeCloud) -> None:
    """``edgetta run`` is killed (SIGKILL) right as it applies a bundle: after the slot commit, around the
    checkpoint that records it. Restarted, it runs on the committed slot's tensors, and its checkpoint, its
    adapter state and the slot state agree on the version."""
    import yaml

    from edgetta.contract import load_artifact
    from edgetta.daemon.checkpoint import CheckpointStore
    from edgetta.runtime.checkpoint import load_checkpoint
    from edgetta.sync.bundle import create_bundle
    from tests.daemon_helpers import start_daemon, wait_for_log, write_stream

    config = sync_config(tmp_path, cloud, upload={"policy": "none"})
    data = yaml.safe_load(config.read_text())
    write_stream(tmp_path / "stream.npz", 20_000)
    data["streams"] = [{"name": "s0", "source": {"kind": "npz", "path": "stream.npz"}, "output": {"path": "out.jsonl"}}]
    data["log"] = {"format": "json", "level": "info"}
    data.pop("metrics")
    config.write_text(yaml.safe_dump(data))
    artifact = load_artifact(REPO / "edgetta/assets/fmnist_resnet_bn")
    bundles = {v: _bundle_params(artifact, 1.0 + 0.01 * v) for v in (1, 2)}
    log = tmp_path / "edge.log"
    outcomes = []
    for version, params in bundles.items():
        cloud.bundle = create_bundle(artifact, params, version=version, private_key=tmp_path / "keys/private.pem")
        cloud.bundle_version = version
        lines_before = len(log.read_text().splitlines()) if log.exists() else 0
        proc = start_daemon(config, stderr=log)
        try:
            wait_for_log(log, f"bundle version {version} applied from slot", timeout=60, after=lines_before)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        state = json.loads((tmp_path / "state/sync/slots/state.json").read_text())
        assert state["applied_version"] == version and state["slots"][state["active"]]["version"] == version
        ck = CheckpointStore(tmp_path / "state/streams/s0").load()
        outcomes.append((ck.sync or {}).get("bundle_version"))  # the version the last committed state was made on
    cloud.bundle = None
    # restart: it must come back on bundle 2 whatever the checkpoint recorded, then stop cleanly
    lines_before = len(log.read_text().splitlines())
    proc = start_daemon(config, stderr=log)
    try:
        wait_for_log(log, "edgetta run: started", timeout=60, after=lines_before)
        if outcomes[-1] != 2:  # killed before the checkpoint recorded bundle 2: adaptation restarts from the slot
            wait_for_log(log, f"checkpoint was made on bundle {outcomes[-1]}, slot", timeout=5, after=lines_before)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    ck = CheckpointStore(tmp_path / "state/streams/s0").load()
    assert ck.sync == {"bundle_version": 2}
    tensors, meta = load_checkpoint(tmp_path / "state/streams/s0" / ck.adapter_file, artifact_id=artifact.identity)
    assert meta["source_version"] == 2
    for name, value in bundles[2].items():
        assert np.array_equal(tensors[f"source/{name}"], value)
    assert all(v in (None, 1, 2) for v in outcomes), outcomes


def test_the_device_side_never_imports_torch() -> None:
    from tests.conftest import run_without_torch

    body = (
        "import edgetta.daemon, edgetta.sync._edge_sync, edgetta.sync._edge_client\n"
        "from edgetta.sync import selection, queue, uploader, poller, config, slots, bundle, keys\n"
        "import numpy as np\n"
        "d = selection.CemaSelector(10).select(np.zeros((4, 10)))\n"
        "rc = int(list(d.reasons) != ['unreliable'] * 4)\n"
    )
    result = run_without_torch(body)
    assert result.returncode == 0, result.stderr + result.stdout
