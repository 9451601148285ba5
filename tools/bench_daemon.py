#!/usr/bin/env python
"""Benchmark of ``edgetta run`` against ``edgetta replay`` on the same artifact and data, in one run.

1. Throughput: a recorded stream (the bundled demo stream tiled to ``--rows``) read as fast as possible, through
   the replay loop (run_stream with the JSONL and event sinks ``edgetta replay`` writes) and through the daemon
   (reader thread, queue, metrics, JSON logs, checkpoints at the default cadence); items per second from the
   first item read to the last record written. Runs alternate, ``--reps`` each; medians reported.
2. Per-item latency: the same data arriving at a fixed rate (``--rate-fraction`` of replay's throughput), each
   item stamped with its scheduled arrival time; latency = record written - arrival; p50 and p99.
3. Checkpoint cost: the daemon with checkpoints at the default cadence versus none; and the time the background
   committer spent per commit (fsyncs, adapter state, manifest; from the daemon's own latency histogram).
4. RSS soak (``--soak-seconds``, default 600): a child process runs the daemon on an endless recorded stream
   (metrics scraped every 5 s, checkpoints at the default cadence) and samples its own RSS every 2 s; growth
   after the warm-up (the first 10%, at least 30 s) must stay under 5 MiB.

    python tools/bench_daemon.py --rows 10000 --reps 3 --soak-seconds 600 --json docs/daemon.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetta.daemon import Daemon, load_daemon_config  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.streams import EventLog, Item, JsonlSink, NpzSource, run_stream  # noqa: E402
from edgetta.streams.records import Record  # noqa: E402

ASSETS = REPO / "edgetta" / "assets"
ART = ASSETS / "fmnist_resnet_bn"


# -- data and sources --------------------------------------------------------------------------------------
def demo_rows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(ASSETS / "demo_stream.npz") as data:
        idx = np.arange(n) % len(data["labels"])
        return data["images"][idx][:, None], data["labels"][idx], data["phase"][idx]


class PacedSource:
    """Items arriving at ``rate`` per second; each stamped with its scheduled arrival time (so time an item
    waits because the consumer is busy counts as latency)."""

    live = False
    preprocessor = None

    def __init__(self, x: np.ndarray, rate: float) -> None:
        self.x, self.rate, self.name = x, rate, "paced"
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Item]:
        start = time.time() + 0.05
        for i in range(len(self.x)):
            due = start + i / self.rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            if self._stop.is_set():
                return
            yield Item(self.x[i], timestamp=due, position=i)

    def close(self) -> None:
        self._stop.set()


class EndlessSource:
    """The demo stream over and over, as fast as the consumer takes it (a recorded source: never dropped)."""

    live = False
    preprocessor = None

    def __init__(self) -> None:
        self.x, _, _ = demo_rows(1920)
        self.name = "endless"
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Item]:
        i = 0
        while not self._stop.is_set():
            yield Item(self.x[i % len(self.x)], position=i)
            i += 1

    def close(self) -> None:
        self._stop.set()


class WriteTimes:
    """A sink noting, per record, its item's timestamp and when the record was written."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    def write(self, record: Record) -> None:
        self.rows.append((record.timestamp, time.time()))

    def write_event(self, event: Any) -> None:
        """Records only."""

    def close(self) -> None:
        """Nothing to release."""


# -- the two paths -----------------------------------------------------------------------------------------
def adapt_spec(preset: str) -> dict[str, Any]:
    return {"preset": preset, "method_args": {"optimizer": "adam", "lr": 0.001}}


def run_replay(folder: Path, preset: str, source: Any) -> list[tuple[float, float]]:
    """What `edgetta replay` runs: run_stream with the predictions and events files (plus the timing sink)."""
    config = load_daemon_config(write_config(folder, preset, 512)).streams[0].adapt
    out = folder / "replay"
    out.mkdir(exist_ok=True)
    times = WriteTimes()
    sinks = [JsonlSink(out / "predictions.jsonl"), EventLog(out / "events.jsonl"), times]
    run_stream(Adapter(ART, config), source, sinks)
    for sink in sinks:
        sink.close()
    return times.rows


def write_config(folder: Path, preset: str, every_items: int, metrics: bool = True) -> Path:
    config = {
        "artifact": "bundled:fmnist_resnet_bn",
        "adapt": adapt_spec(preset),
        "state_dir": "state",
        "checkpoint": {"every_items": every_items, "every_seconds": 60 if every_items < 10**8 else 10**8},
        "log": {"format": "json", "level": "info", "file": "edgetta.log"},
        "streams": [{"name": "s0", "source": {"kind": "npz", "path": "stream.npz"}, "output": {"path": "out.jsonl"}}],
    }
    if metrics:
        config["metrics"] = {"host": "127.0.0.1", "port": 0}
    path = folder / "daemon.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_daemon(folder: Path, preset: str, every_items: int, source: Any | None = None) -> dict[str, Any]:
    """The daemon in this process (fresh state); records' item timestamps and write times, commit seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    kwargs = {} if source is None else {"open_source": lambda *a, **k: source}
    daemon = Daemon(load_daemon_config(write_config(folder, preset, every_items)), resume=False, **kwargs)
    started = time.time()
    summary = daemon.run()
    wall = time.time() - started
    rows = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    commit = 0.0
    for family in text_string_to_metric_families(daemon.metrics.render()[0].decode()):
        for s in family.samples:
            if s.name == "edgetta_latency_seconds_sum" and s.labels.get("stage") == "checkpoint":
                commit += s.value
    return {
        "times": [(r["timestamp"], r["predicted_at"]) for r in rows],
        "checkpoints": summary.streams["s0"]["checkpoints"],
        "commit_seconds": commit,
        "wall": wall,
    }


def throughput(times: list[tuple[float, float]]) -> float:
    first = min(t for t, _ in times)
    last = max(w for _, w in times)
    return len(times) / (last - first)


def latency(times: list[tuple[float, float]]) -> tuple[float, float]:
    lat = np.array([w - t for t, w in times]) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


# -- soak (child process) ----------------------------------------------------------------------------------
def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak_child(seconds: float, preset: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="edgetta-soak-"))
    source = EndlessSource()
    daemon = Daemon(
        load_daemon_config(write_config(folder, preset, 512)), resume=False, open_source=lambda *a, **k: source
    )
    samples: list[tuple[float, float, int]] = []
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(summary=daemon.run()), daemon=True)
    thread.start()
    daemon.ready.wait(120)
    t0 = time.monotonic()
    scrapes = 0
    unhealthy: dict[str, int] = {}
    while time.monotonic() - t0 < seconds:
        time.sleep(2.0)
        items = daemon.workers[0].counters["processed"]
        samples.append((time.monotonic() - t0, rss_mib(), items))
        if len(samples) % 3 == 0 and daemon.address:
            host, port = daemon.address
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read()
            try:
                urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10).read()
            except urllib.error.HTTPError as err:  # 503: note why (e.g. the collapse guard firing)
                for reason in json.loads(err.read()).get("reasons", []):
                    unhealthy[reason.split(":")[0]] = unhealthy.get(reason.split(":")[0], 0) + 1
            scrapes += 1
    daemon.request_stop("soak over")
    thread.join(120)
    shutil.rmtree(folder, ignore_errors=True)  # the output of a long soak runs to hundreds of MB
    warm = max(30.0, 0.1 * seconds)
    after = [(t, r) for t, r, _ in samples if t >= warm] or [(t, r) for t, r, _ in samples[-2:]]
    ts, rs = np.array([t for t, _ in after]), np.array([r for _, r in after])
    slope = float(np.polyfit(ts, rs, 1)[0] * 3600) if len(ts) > 2 else 0.0
    return {
        "seconds": seconds,
        "warmup_seconds": warm,
        "items": samples[-1][2],
        "items_per_second": samples[-1][2] / samples[-1][0],
        "rss_start_mib": samples[0][1],
        "rss_after_warmup_mib": float(rs[0]),
        "rss_end_mib": float(rs[-1]),
        "rss_max_after_warmup_mib": float(rs.max()),
        "growth_after_warmup_mib": float(rs[-1] - rs[0]),
        "spread_after_warmup_mib": float(rs.max() - rs.min()),
        "slope_mib_per_hour": slope,
        "scrapes": scrapes,
        "unhealthy_answers": unhealthy,
        "resets": daemon.workers[0].adapter.state.reset_count,
        "checkpoints": result["summary"].streams["s0"]["checkpoints"] if "summary" in result else None,
        "samples": [(round(t, 1), round(r, 2), n) for t, r, n in samples],
    }


# -- main --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000, help="rows of the recorded stream (throughput runs)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--preset", default="safe_tent", help="adaptation preset (Adam 1e-3 on top)")
    parser.add_argument("--rate-fraction", type=float, default=0.5, help="arrival rate / replay throughput")
    parser.add_argument("--latency-rows", type=int, default=4000)
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0: no soak")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--soak-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.soak_child:
        print(json.dumps(soak_child(args.soak_seconds, args.preset)))
        return

    x, y, domain = demo_rows(args.rows)
    results: dict[str, Any] = {"rows": args.rows, "preset": args.preset, "reps": args.reps}
    tput: dict[str, list[float]] = {"replay": [], "daemon": [], "daemon_no_checkpoints": []}
    lat_full: dict[str, list[tuple[float, float]]] = {k: [] for k in tput}
    commit_share, checkpoints, commit_ms = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.savez(root / "stream.npz", x=x, y=y, domain=domain)
        for rep in range(args.reps):
            for kind in ("replay", "daemon", "daemon_no_checkpoints"):
                folder = root / f"{kind}-{rep}"
                folder.mkdir()
                (folder / "stream.npz").symlink_to(root / "stream.npz")
                if kind == "replay":
                    times = run_replay(folder, args.preset, NpzSource(folder / "stream.npz"))
                else:
                    every = 512 if kind == "daemon" else 10**9
                    run = run_daemon(folder, args.preset, every)
                    times = run["times"]
                    if kind == "daemon":
                        commit_share.append(run["commit_seconds"] / throughput_window(times))
                        checkpoints.append(run["checkpoints"])
                        commit_ms.append(run["commit_seconds"] / run["checkpoints"])
                tput[kind].append(throughput(times))
                lat_full[kind].append(latency(times))
                print(f"rep {rep} {kind:22s} {tput[kind][-1]:7.0f} items/s", flush=True)
        replay_tput = statistics.median(tput["replay"])
        rate = args.rate_fraction * replay_tput
        paced: dict[str, tuple[float, float]] = {}
        xs = x[: args.latency_rows]
        for kind in ("replay", "daemon"):
            folder = root / f"paced-{kind}"
            folder.mkdir()
            (folder / "stream.npz").symlink_to(root / "stream.npz")
            if kind == "replay":
                times = run_replay(folder, args.preset, PacedSource(xs, rate))
            else:
                times = run_daemon(folder, args.preset, 512, PacedSource(xs, rate))["times"]
            paced[kind] = latency(times)
            print(
                f"paced {kind:8s} at {rate:.0f}/s: p50 {paced[kind][0]:.1f} ms, p99 {paced[kind][1]:.1f} ms", flush=True
            )
    med = {k: statistics.median(v) for k, v in tput.items()}
    results["throughput_items_per_second"] = {k: round(v, 1) for k, v in med.items()}
    results["throughput_all_reps"] = {k: [round(v, 1) for v in vs] for k, vs in tput.items()}
    results["daemon_overhead_percent"] = round(100 * (1 - med["daemon"] / med["replay"]), 1)
    results["checkpoint_cost_percent"] = round(100 * (1 - med["daemon"] / med["daemon_no_checkpoints"]), 1)
    results["commit_busy_percent"] = round(100 * statistics.median(commit_share), 2)  # background thread
    results["checkpoints_per_run"] = statistics.median(checkpoints)
    results["commit_ms_per_checkpoint"] = round(1000 * statistics.median(commit_ms), 2)
    results["paced_rate_items_per_second"] = round(rate, 1)
    results["paced_latency_ms"] = {k: {"p50": round(v[0], 1), "p99": round(v[1], 1)} for k, v in paced.items()}
    results["flat_out_latency_ms"] = {
        k: {"p50": round(statistics.median(a for a, _ in v), 1), "p99": round(statistics.median(b for _, b in v), 1)}
        for k, v in lat_full.items()
    }
    if args.soak_seconds > 0:
        print(f"soak: {args.soak_seconds:.0f} s in a child process ...", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--soak-child",
                "--soak-seconds",
                str(args.soak_seconds),
                "--preset",
                args.preset,
            ],
            capture_output=True,
            text=True,
            timeout=args.soak_seconds + 600,
        )
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        results["soak"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in results.items() if k != "soak"}, indent=1))
    if "soak" in results:
        print(json.dumps({k: v for k, v in results["soak"].items() if k != "samples"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def throughput_window(times: list[tuple[float, float]]) -> float:
    return max(w for _, w in times) - min(t for t, _ in times)


if __name__ == "__main__":
    main()
