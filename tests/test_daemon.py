"""The daemon in-process with real parts: the bundled artifact, npz stream files, real files on disk, a real
HTTP scrape of /metrics and /healthz, reader threads with bounded queues. Child processes, signals and the
SIGKILL crash test are in tests/test_daemon_process.py."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetta.daemon import Daemon, RunSummary, load_daemon_config
from edgetta.daemon.checkpoint import CheckpointStore
from edgetta.daemon.config import HealthConfig
from edgetta.daemon.health import StreamStatus, evaluate
from edgetta.daemon.outputs import OffsetFile
from edgetta.errors import CheckpointError
from edgetta.runtime.adapter import Adapter
from edgetta.streams import Collector, Item, NpzSource, run_stream
from tests.conftest import run_without_torch
from tests.daemon_helpers import (
    ASSETS,
    Background,
    free_port,
    key,
    records,
    scrape,
    stream_entry,
    wait_until,
    write_config,
    write_stream,
)

ART = ASSETS / "fmnist_resnet_bn"


def run(config_path: Path, **kwargs: Any) -> RunSummary:
    return Daemon(load_daemon_config(config_path), **kwargs).run()


def load_daemon_config_for_tent(tmp: Path | None = None) -> Any:
    """A parsed config of the tests' Tent-with-rails deployment (paths unused)."""
    import tempfile

    folder = Path(tempfile.mkdtemp()) if tmp is None else tmp
    return load_daemon_config(write_config(folder))


def replay_reference(stream: Path, config_path: Path) -> list[tuple]:
    """The same stream through run_stream (what `edgetta replay` runs) with the same config."""
    config = load_daemon_config(config_path).streams[0].adapt
    collector = Collector()
    run_stream(Adapter(ART, config), NpzSource(stream), [collector])
    return [(r.index, r.position, r.pred, round(r.entropy, 6), r.skip) for r in collector.records]


@pytest.fixture()
def deployment(tmp_path: Path) -> Path:
    write_stream(tmp_path / "stream.npz", 704)  # 320 rows of phase 0, 320 of phase 1, 64 of phase 2
    return write_config(tmp_path)


# ------------------------------------------------------------------------------- one loop, exact resume


def test_the_daemon_writes_what_replay_computes(deployment):
    summary = run(deployment)
    assert summary.exit_code == 0 and summary.reason == "all streams ended"
    out = records(deployment.parent / "out/s0.jsonl")
    assert [key(r) for r in out] == replay_reference(deployment.parent / "stream.npz", deployment)
    assert summary.streams["s0"]["processed"] == 704 and summary.streams["s0"]["state"] == "finished"
    assert {"timestamp", "predicted_at", "class", "label", "domain"} <= set(out[0])


def test_a_run_stopped_anywhere_and_resumed_equals_one_uninterrupted_run(deployment, tmp_path):
    """Stops land between batches or mid-batch; a recorded stream keeps only whole batches at a stop, so
    the resumed run batches exactly as an uninterrupted one."""
    reference = replay_reference(deployment.parent / "stream.npz", deployment)
    # a queue that does not hold whole batches: a stop finds a partial batch in it
    write_config(deployment.parent, [stream_entry("s0", "stream.npz", "out/s0.jsonl", queue={"size": 100})])
    bg = Background(deployment, resume=False)
    time.sleep(0.3)
    first = bg.stop()
    assert first.reason == "stopped by test" and first.exit_code == 0
    done = first.streams["s0"]["processed"]
    assert done % 64 == 0  # whole batches only
    summary = run(deployment, max_items=200)  # resumes by default; ends after 200 more items (a partial batch)
    assert summary.streams["s0"]["read_this_run"] == 200
    part = records(deployment.parent / "out/s0.jsonl")
    assert [r["index"] for r in part] == list(range(len(part)))
    run(deployment)
    out = records(deployment.parent / "out/s0.jsonl")
    assert [r["index"] for r in out] == list(range(704))
    # up to the --max-items boundary (a partial batch by design) the output is the uninterrupted one
    assert [key(r) for r in out[: done + 192]] == reference[: done + 192]


def test_resume_cuts_off_records_written_after_the_checkpoint(deployment):
    """A crash after records were written but before their checkpoint: those bytes are truncated on resume
    and the records made again, once."""
    reference = replay_reference(deployment.parent / "stream.npz", deployment)
    run(deployment, max_items=256)
    out = deployment.parent / "out/s0.jsonl"
    store = CheckpointStore(deployment.parent / "state/streams/s0")
    committed = store.load()
    assert committed.output_offset == out.stat().st_size and committed.position == "stream.npz:255"
    with out.open("ab") as f:  # what a killed daemon leaves: records past the checkpoint and a torn line
        f.write(out.read_bytes()[:500])
        f.write(b'{"index": 300, "pred')
    run(deployment)
    assert [key(r) for r in records(out)] == reference


def test_fresh_discards_the_checkpoint_and_truncates_the_output(deployment):
    run(deployment, max_items=128)
    run(deployment, resume=False, max_items=64)
    assert [r["index"] for r in records(deployment.parent / "out/s0.jsonl")] == list(range(64))


def test_resume_is_refused_when_the_stream_settings_changed(deployment):
    run(deployment, max_items=64)
    text = deployment.read_text().replace("lr: 0.001", "lr: 0.01")
    deployment.write_text(text)
    with pytest.raises(CheckpointError, match=r"other settings \(streams\[0\]\.adapt\).*--fresh"):
        run(deployment)
    with pytest.raises(CheckpointError, match="--resume: stream s1 has no checkpoint"):
        path = write_config(deployment.parent, [stream_entry("s1", "stream.npz", "out/s1.jsonl")])
        run(path, resume=True)


# ------------------------------------------------------------------------------- checkpoints are atomic


class Boom(Exception):
    pass


@pytest.mark.parametrize("step", ["adapter", "manifest_write", "manifest_replace", "cleanup"])
def test_a_commit_that_dies_at_any_step_leaves_the_old_or_the_new_checkpoint_whole(tmp_path, monkeypatch, step):
    """Whatever step of a commit fails, the manifest on disk names a state that exists and that was saved
    together with the manifest's position: never a new state with an old position."""
    import edgetta.daemon.checkpoint as ck
    from edgetta import atomic_io

    write_stream(tmp_path / "stream.npz", 256)
    path = write_config(tmp_path, checkpoint={"every_items": 64})
    run(path, max_items=128)
    store = CheckpointStore(tmp_path / "state/streams/s0")
    before = store.load()
    adapter = Adapter(ART, load_daemon_config(path).streams[0].adapt)
    adapter.restore(store.adapter_path(before))
    adapter.batches += 5  # a state that differs from the committed one
    new = ck.StreamCheckpoint(**{**before.__dict__, "seq": before.seq + 1, "position": "stream.npz:191"})

    def fail(*args: Any, **kwargs: Any) -> None:
        raise Boom(step)

    real_mkstemp, real_replace = atomic_io.tempfile.mkstemp, atomic_io.os.replace

    def manifest_mkstemp(*args: Any, **kwargs: Any) -> Any:  # the manifest's temp file: half written, then death
        fd, name = real_mkstemp(*args, **kwargs)
        if kwargs.get("prefix", "").startswith(".checkpoint.json"):
            atomic_io.os.write(fd, b'{"format": "edgetta.daemon.checkpoint", "ver')
            atomic_io.os.close(fd)
            fail()
        return fd, name

    def manifest_replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "checkpoint.json":
            fail()
        real_replace(src, dst)

    if step == "adapter":
        monkeypatch.setattr(ck.AdapterState, "save", lambda self, p: (Path(p).write_bytes(b"partial"), fail()))
    elif step == "manifest_write":
        monkeypatch.setattr(atomic_io.tempfile, "mkstemp", manifest_mkstemp)
    elif step == "manifest_replace":
        monkeypatch.setattr(atomic_io.os, "replace", manifest_replace)
    else:
        monkeypatch.setattr(ck.CheckpointStore, "_remove_stale", fail)
    with pytest.raises(Boom):
        store.commit(new, ck.AdapterState.of(adapter))
    monkeypatch.undo()
    after = store.load()
    restored = Adapter(ART, load_daemon_config(path).streams[0].adapt)
    restored.restore(store.adapter_path(after))
    if step == "cleanup":  # the manifest was replaced: the new checkpoint, whole
        assert after.position == "stream.npz:191" and restored.batches == before.runner["index"] // 64 + 5
    else:
        assert after.position == before.position and after.seq == before.seq
        assert restored.batches == before.runner["index"] // 64


def test_the_state_handed_to_the_background_commit_is_a_copy():
    """The committer writes while the stream goes on: the adapter's next batches must not change it."""
    from edgetta.daemon.checkpoint import AdapterState

    adapter = Adapter(ART, load_daemon_config_for_tent().streams[0].adapt)
    with np.load(ASSETS / "demo_stream.npz") as data:
        x = data["images"][:192, None]
    adapter.process(x[:64])
    state = AdapterState.of(adapter)
    before = {k: v.copy() for k, v in state.tensors.items()}
    adapter.process(x[64:128])
    adapter.process(x[128:])
    assert all(np.array_equal(before[k], state.tensors[k]) for k in before)
    assert any(not np.array_equal(before[k], v) for k, v in AdapterState.of(adapter).tensors.items())


def test_a_commit_that_fails_on_disk_fails_its_stream_only(tmp_path, monkeypatch):
    write_stream(tmp_path / "a.npz", 512)
    path = write_config(
        tmp_path,
        [stream_entry("bad", "a.npz", "out/bad.jsonl"), stream_entry("good", "a.npz", "out/good.jsonl")],
        checkpoint={"every_items": 64},
    )
    real = CheckpointStore.commit

    def commit(self: CheckpointStore, checkpoint: Any, state: Any) -> None:
        if self.folder.name == "bad" and checkpoint.seq >= 3:
            raise OSError(28, "No space left on device")
        real(self, checkpoint, state)

    monkeypatch.setattr(CheckpointStore, "commit", commit)
    summary = run(path)
    assert summary.streams["good"]["state"] == "finished" and summary.streams["good"]["processed"] == 512
    assert summary.streams["bad"]["state"] == "failed" and "No space left" in summary.streams["bad"]["reason"]
    assert CheckpointStore(tmp_path / "state/streams/bad").load().seq == 2  # the last good commit stays


def test_outputs_reach_the_disk_before_a_manifest_names_their_offsets(tmp_path, monkeypatch):
    """A power cut must not leave a manifest whose offsets point past what was synced: every manifest
    replace comes after an fsync of each output (records and events) since the previous one."""
    from edgetta import atomic_io

    journal: list[str] = []
    real_fsync, real_replace = OffsetFile.fsync, atomic_io.os.replace

    def fsync(self: OffsetFile) -> None:
        journal.append(self.path.name)
        real_fsync(self)

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        if Path(dst).name == "checkpoint.json":
            journal.append("manifest")

    monkeypatch.setattr(OffsetFile, "fsync", fsync)
    monkeypatch.setattr(atomic_io.os, "replace", replace)
    write_stream(tmp_path / "stream.npz", 320)
    entry = stream_entry("s0", "stream.npz", "out/s0.jsonl")
    entry["output"]["events"] = "out/s0.events.jsonl"
    summary = run(write_config(tmp_path, [entry], checkpoint={"every_items": 64}))
    assert journal.count("manifest") == summary.streams["s0"]["checkpoints"] >= 5
    since: set[str] = set()
    for step in journal:
        if step == "manifest":
            assert since == {"s0.jsonl", "s0.events.jsonl"}, journal
            since = set()
        else:
            since.add(step)


def test_a_reader_of_the_manifest_never_sees_it_change_under_it(tmp_path):
    """The manifest is replaced, never rewritten in place: a reader that opened it before a commit reads the
    whole old manifest after the commit (what a crash mid-write would otherwise tear)."""
    write_stream(tmp_path / "stream.npz", 256)
    path = write_config(tmp_path, checkpoint={"every_items": 64})
    run(path, max_items=64)
    store = CheckpointStore(tmp_path / "state/streams/s0")
    with store.manifest.open("rb") as old:
        before = store.load()
        run(path, max_items=64)
        assert json.loads(old.read())["seq"] == before.seq
    assert store.load().seq > before.seq
    names = sorted(p.name for p in store.folder.iterdir())
    assert names == [f"adapter-{store.load().seq:08d}.safetensors", "checkpoint.json"]  # nothing stale or temporary


# ------------------------------------------------------------------------------- streams and failures


def test_streams_of_one_artifact_share_one_engine_but_not_their_state(tmp_path):
    write_stream(tmp_path / "a.npz", 256)
    write_stream(tmp_path / "b.npz", 256, offset=640)  # another phase: other statistics, other updates
    both = write_config(
        tmp_path,
        [stream_entry("a", "a.npz", "out/a.jsonl"), stream_entry("b", "b.npz", "out/b.jsonl")],
        state_dir="state2",
    )
    daemon = Daemon(load_daemon_config(both))
    daemon.run()
    assert daemon.engines == 1
    adapters = [w.adapter for w in daemon.workers]
    assert adapters[0].engine is adapters[1].engine and adapters[0].state is not adapters[1].state
    for name in ("a", "b"):
        alone = write_config(
            tmp_path, [stream_entry(name, f"{name}.npz", f"alone/{name}.jsonl")], state_dir="s-" + name
        )
        run(alone)
        assert [key(r) for r in records(tmp_path / f"out/{name}.jsonl")] == [
            key(r) for r in records(tmp_path / f"alone/{name}.jsonl")
        ]


def test_a_stream_whose_file_is_missing_or_corrupt_fails_while_the_others_go_on(tmp_path):
    write_stream(tmp_path / "good.npz", 256)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    path = write_config(
        tmp_path,
        [
            stream_entry("missing", "nothing-here.npz", "out/missing.jsonl"),
            stream_entry("corrupt", "corrupt.npz", "out/corrupt.jsonl"),
            stream_entry("good", "good.npz", "out/good.jsonl"),
        ],
    )
    daemon = Daemon(load_daemon_config(path))
    summary = daemon.run()
    assert summary.streams["good"]["state"] == "finished" and summary.streams["good"]["processed"] == 256
    assert summary.streams["missing"]["state"] == "failed" and "does not exist" in summary.streams["missing"]["reason"]
    assert (
        summary.streams["corrupt"]["state"] == "failed" and "not a readable NPZ" in summary.streams["corrupt"]["reason"]
    )
    assert summary.exit_code == 1  # every stream ended, some failed
    healthy, payload = daemon.health()
    assert not healthy and any("missing failed" in r for r in payload["reasons"])
    assert payload["streams"]["good"]["state"] == "finished"


# ------------------------------------------------------------------------------- live sources (a fake device)


class FakeLive:
    """A live source: yields ``items`` as fast as asked (``delay`` apart), then waits like an idle camera until
    closed. ``live = True``, so the daemon drops the oldest items when its queue is full."""

    live = True
    preprocessor = None

    def __init__(self, n: int, delay: float = 0.0, live: bool = True) -> None:
        self.live = live
        self.name = "fake"
        self.n, self.delay = n, delay
        self.closed = threading.Event()
        with np.load(ASSETS / "demo_stream.npz") as data:
            self.images = data["images"][:n, None]

    def __iter__(self) -> Iterator[Item]:
        for i in range(self.n):
            if self.closed.is_set():
                return
            yield Item(self.images[i], position=i)
            if self.delay:
                time.sleep(self.delay)
        self.closed.wait(120)

    def close(self) -> None:
        self.closed.set()


def live_config(tmp_path: Path, **stream: Any) -> Path:
    entry = {"name": "cam", "source": {"kind": "camera", "device": 0}, "output": {"path": "out/cam.jsonl"}, **stream}
    return write_config(tmp_path, [entry], metrics={"host": "127.0.0.1", "port": free_port()})


def opening(source: Any) -> dict[str, Any]:
    """Daemon keyword arguments that make every stream open ``source`` (how a program embedding the daemon
    brings sources of its own)."""
    return {"open_source": lambda *args, **kwargs: source}


def test_a_live_partial_batch_is_flushed_after_flush_after_seconds(tmp_path, monkeypatch):
    path = live_config(tmp_path, flush_after=0.2)
    bg = Background(path, **opening(FakeLive(5)))
    out = tmp_path / "out/cam.jsonl"
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, timeout=10)
    summary = bg.stop()
    assert summary.streams["cam"]["processed"] == 5 and summary.exit_code == 0


def test_a_live_stream_resumed_after_a_crash_keeps_the_records_written_since_its_checkpoint(tmp_path):
    """Live data cannot be read again: records written after the last checkpoint stay (a torn last line goes),
    and the indices go on after them."""
    path = live_config(tmp_path, flush_after=0.05)
    bg = Background(path, **opening(FakeLive(10)))
    out = tmp_path / "out/cam.jsonl"
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 10)
    bg.stop()
    written = out.read_text().splitlines()
    extra = [json.dumps({**json.loads(written[-1]), "index": i, "position": 100 + i}) for i in (10, 11)]
    out.write_text("\n".join(written + extra) + '\n{"index": 12, "pos')  # what a crash leaves
    bg = Background(path, **opening(FakeLive(3)))
    wait_until(lambda: len(out.read_text().splitlines()) == 15)
    bg.stop()
    got = records(out)
    assert [r["index"] for r in got] == list(range(15))
    assert [r["position"] for r in got[10:]] == [110, 111, 0, 1, 2]


def slow_model(monkeypatch, seconds: float) -> None:
    original = Adapter.process

    def process(self: Adapter, x: Any) -> Any:
        time.sleep(seconds)
        return original(self, x)

    monkeypatch.setattr(Adapter, "process", process)


def test_a_full_queue_drops_the_oldest_live_items_and_counts_every_drop(tmp_path, monkeypatch):
    source = FakeLive(400)
    slow_model(monkeypatch, 0.05)
    path = live_config(tmp_path, queue={"size": 8}, flush_after=0.05)
    bg = Background(path, **opening(source))
    wait_until(lambda: source.closed.is_set() or bg.daemon.workers[0].reader.read == 400)
    worker = bg.daemon.workers[0]
    wait_until(lambda: len(worker.queue) == 0 and not worker.runner.pending)
    host, port = bg.daemon.address
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    summary = bg.stop()
    s = summary.streams["cam"]
    assert s["dropped"] > 0 and s["processed"] + s["dropped"] == 400
    assert f'edgetta_dropped_total{{reason="queue_full",stream="cam"}} {float(s["dropped"])}' in text
    assert len(records(tmp_path / "out/cam.jsonl")) == s["processed"]


def test_a_recorded_source_is_never_dropped_from_even_when_the_model_is_slow(tmp_path, monkeypatch):
    slow_model(monkeypatch, 0.02)
    path = live_config(tmp_path, queue={"size": 4}, flush_after=0.05)
    bg = Background(path, **opening(FakeLive(120, live=False)))
    out = tmp_path / "out/cam.jsonl"
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 64)
    summary = bg.stop()
    assert summary.streams["cam"]["dropped"] == 0
    got = records(out)
    assert [r["position"] for r in got] == list(range(len(got)))  # nothing skipped over


# ------------------------------------------------------------------------------- metrics and health over HTTP


def test_metrics_and_healthz_are_served_over_http_with_the_documented_names_and_labels(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    path = live_config(tmp_path, flush_after=0.1)
    bg = Background(path, **opening(FakeLive(100, delay=0.002)))
    out = tmp_path / "out/cam.jsonl"
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 100)
    code, text = scrape(bg.daemon, "/metrics")
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    want = {
        "edgetta_items_total": {"stream", "outcome"},
        "edgetta_updates_total": {"stream"},
        "edgetta_rail_events_total": {"stream", "rail", "action"},
        "edgetta_entropy_ema": {"stream"},
        "edgetta_queue_depth": {"stream"},
        "edgetta_latency_seconds_bucket": {"stream", "stage", "le"},
        "edgetta_checkpoints_total": {"stream"},
        "edgetta_stream_state": {"stream", "state"},
    }
    for name, labels in want.items():
        assert name in samples, f"{name} missing from /metrics"
        assert all(set(s.labels) == labels for s in samples[name]), (name, samples[name][0].labels)
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for v in samples.values() for s in v}
    assert value[("edgetta_items_total", (("outcome", "processed"), ("stream", "cam")))] == 100
    assert value[("edgetta_stream_state", (("state", "running"), ("stream", "cam")))] == 1
    assert value[("edgetta_queue_depth", (("stream", "cam"),))] == 0
    assert 0 < value[("edgetta_entropy_ema", (("stream", "cam"),))] < np.log(10)
    stages = {s.labels["stage"] for s in samples["edgetta_latency_seconds_bucket"]}
    assert {"queue", "model", "item", "checkpoint"} <= stages
    actions = {(s.labels["rail"], s.labels["action"]) for s in samples["edgetta_rail_events_total"]}
    assert ("runtime", "rails") in actions  # the rail order event of the Tent config
    code, body = scrape(bg.daemon, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    # no item for longer than health.stall_seconds: unhealthy, with the reason
    bg.daemon.config = dataclasses.replace(bg.daemon.config, health=HealthConfig(stall_seconds=0.2))
    time.sleep(0.4)
    code, body = scrape(bg.daemon, "/healthz")
    assert code == 503 and "stream cam stalled" in json.loads(body)["reasons"][0]
    assert scrape(bg.daemon, "/nope")[0] == 404
    bg.stop()


def test_metrics_of_two_daemons_in_one_process_do_not_mix(tmp_path):
    daemons = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        daemons.append(Background(live_config(tmp_path / name, flush_after=0.05), **opening(FakeLive(3))))
    wait_until(lambda: all(d.daemon.workers[0].counters["processed"] == 3 for d in daemons))
    texts = [scrape(d.daemon, "/metrics")[1] for d in daemons]
    assert daemons[0].daemon.metrics.registry is not daemons[1].daemon.metrics.registry
    assert all('edgetta_items_total{outcome="processed",stream="cam"} 3.0' in t for t in texts)  # not 6
    for d in daemons:
        d.stop()


def test_healthz_turns_unhealthy_when_the_collapse_guard_keeps_firing():
    config = HealthConfig(stall_seconds=60, collapse_resets=3, collapse_window_seconds=100)
    status = StreamStatus("cam", state="running")
    for t in (1.0, 50.0):
        status.collapse_reset(now=t)
    assert evaluate([status], config, now=60.0)[0]
    status.collapse_reset(now=60.0)
    healthy, payload = evaluate([status], config, now=60.0)
    assert not healthy and "collapse guard reset 3 times" in payload["reasons"][0]
    assert evaluate([status], config, now=105.0)[0]  # the first reset left the window


def test_collapse_guard_resets_reach_health_and_metrics_from_real_events(tmp_path):
    """A collapse-guard threshold every stream is below (50 nats): every update resets, /healthz says so."""
    write_stream(tmp_path / "stream.npz", 256)
    guard = {"name": "collapse_guard", "threshold": 50.0, "max_class_fraction": None}
    adapt = {"method": "tent", "method_args": {"optimizer": "adam", "lr": 0.001}, "batch_size": 64, "rails": [guard]}
    path = write_config(tmp_path, adapt=adapt, health={"collapse_resets": 2})
    daemon = Daemon(load_daemon_config(path))
    daemon.run()
    healthy, payload = daemon.health()
    assert daemon.workers[0].adapter.state.reset_count >= 2
    assert not healthy and "collapse guard reset" in " ".join(payload["reasons"])


def test_sar_model_recoveries_reach_health_like_collapse_guard_resets(tmp_path):
    """The sar preset recovers on its own (no collapse_guard rail); a threshold every stream is below resets
    after every update, and /healthz must report that as collapse."""
    write_stream(tmp_path / "stream.npz", 256)
    adapt = {"method": "sar", "method_args": {"recovery_threshold": 50.0}, "batch_size": 64}
    path = write_config(tmp_path, adapt=adapt, health={"collapse_resets": 2})
    daemon = Daemon(load_daemon_config(path))
    daemon.run()
    healthy, payload = daemon.health()
    assert daemon.workers[0].adapter.state.reset_count >= 2
    assert not healthy and "collapse" in " ".join(payload["reasons"])


# ------------------------------------------------------------------------------- outputs


def test_a_stream_counts_at_most_so_many_distinct_skip_reasons():
    """Reasons that name a frame number would otherwise grow the counts (and every checkpoint) without bound."""
    from edgetta.daemon.stream import MAX_SKIP_REASONS
    from edgetta.streams.loop import OTHER_REASONS, StreamRunner

    runner = StreamRunner(
        Adapter(ART, load_daemon_config_for_tent().streams[0].adapt), max_skip_reasons=MAX_SKIP_REASONS
    )
    runner.feed(Item(None, position=i, error=f"frame {i} could not be read") for i in range(300))
    runner.flush()
    assert len(runner.skips) == MAX_SKIP_REASONS + 1 and runner.skips[OTHER_REASONS] == 300 - MAX_SKIP_REASONS
    assert runner.index == 300 and sum(runner.skips.values()) == 300


class Unreadable:
    """A recorded source whose every item fails to decode, each with its own reason (a frame number)."""

    live = False
    preprocessor = None
    name = "unreadable"

    def __iter__(self) -> Iterator[Item]:
        for i in range(300):
            yield Item(None, position=i, error=f"frame {i} could not be read")

    def close(self) -> None:
        """Nothing to release."""


def test_a_daemon_stream_of_unreadable_items_keeps_its_counts_and_checkpoints_bounded(tmp_path):
    from edgetta.daemon.stream import MAX_SKIP_REASONS

    path = write_config(tmp_path)
    summary = run(path, **opening(Unreadable()))
    assert summary.streams["s0"]["skipped"] == 300 and summary.exit_code == 0
    assert len(records(tmp_path / "out/s0.jsonl")) == 300  # every item a skip record with its reason
    runner = CheckpointStore(tmp_path / "state/streams/s0").load().runner
    assert len(runner["skips"]) == MAX_SKIP_REASONS + 1 and sum(runner["skips"].values()) == 300


def test_offset_file_truncates_or_keeps_complete_lines(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3}\n{"tor')
    f = OffsetFile(path, 9)
    assert path.read_bytes() == b'{"a": 1}\n' and f.offset == 9
    f.close()
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3}\n{"tor')
    f = OffsetFile(path, 9, keep_tail=True)
    assert f.kept_lines == 2 and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    f.close()
    with pytest.raises(Exception, match="shorter"):
        OffsetFile(path, 10_000)


def test_csv_output_has_one_header_and_resumes_without_a_second(tmp_path):
    write_stream(tmp_path / "stream.npz", 192)
    entry = stream_entry("s0", "stream.npz", "out/s0.csv")
    entry["output"]["probabilities"] = True
    path = write_config(tmp_path, [entry])
    run(path, max_items=128)
    run(path)
    lines = (tmp_path / "out/s0.csv").read_text().splitlines()
    assert lines[0].startswith("index,position,") and lines[0].endswith(",probs")
    assert len(lines) == 193 and sum(line.startswith("index,") for line in lines) == 1
    assert len(lines[1].split(",")[-1].split()) == 10  # ten class probabilities


# ------------------------------------------------------------------------------- no torch


def test_edgetta_run_never_imports_torch(tmp_path):
    write_stream(tmp_path / "stream.npz", 64)
    path = write_config(tmp_path, metrics={"host": "127.0.0.1", "port": 0})
    result = run_without_torch(f"from edgetta.cli import main\nrc = main(['run', {str(path)!r}])\n", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "s0 (finished) 64 processed" in result.stdout
