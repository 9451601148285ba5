"""``edgetta replay``: run a recorded stream (NPZ with x, optional y and domain) through a method and
write one prediction record per input plus a summary."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgetta.errors import ConfigError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import RuntimeConfig


@dataclass
class Stream:
    x: np.ndarray
    y: np.ndarray | None
    domain: np.ndarray | None


def load_stream(path: str | Path) -> Stream:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"--data {path}: file does not exist") from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--data {path}: not a readable NPZ file ({exc})") from exc
    with data:
        if "x" not in data.files:
            raise ConfigError(f"--data {path}: no array 'x' (found: {', '.join(data.files) or 'nothing'})")
        x = data["x"]
        y = data["y"] if "y" in data.files else None
        domain = data["domain"] if "domain" in data.files else None
    for name, arr in (("y", y), ("domain", domain)):
        if arr is not None and len(arr) != len(x):
            raise ConfigError(f"--data {path}: '{name}' has {len(arr)} entries but 'x' has {len(x)}")
    return Stream(x, y, domain)


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.enabled = stream.isatty()
        self.started = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = done / max(self.total, 1)
        bar = "#" * int(30 * frac)
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{self.total} {rate:,.0f}/s {extra}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def replay(
    adapter: Adapter, stream: Stream, out_dir: str | Path, episodic: bool = False, label: str = "replay"
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: RuntimeConfig = adapter.config
    bs = config.batch_size
    n = len(stream.x)
    correct = labelled = 0
    progress = Progress(n, label)
    started = time.perf_counter()
    with open(out / "predictions.jsonl", "w") as preds_file, open(out / "events.jsonl", "w") as events_file:
        start = 0
        while start < n:
            stop = min(start + bs, n)
            if stream.domain is not None:
                # Never mix two domains in one batch; with --episodic reset at each change.
                first = stream.domain[start]
                change = np.flatnonzero(stream.domain[start:stop] != first)
                if change.size:
                    stop = start + int(change[0])
                if episodic and start > 0 and stream.domain[start - 1] != first:
                    event = adapter.reset(f"domain changed to {int(first)}")
                    events_file.write(json.dumps(event.to_json()) + "\n")
            result = adapter.process(stream.x[start:stop])
            for event in result.events:
                events_file.write(json.dumps(event.to_json()) + "\n")
            for i in range(stop - start):
                idx = start + i
                label_value = int(stream.y[idx]) if stream.y is not None else None
                record: dict[str, Any] = {"index": idx, "label": label_value}
                if result.skipped[i] is None:
                    pred = int(result.preds[i])
                    record.update(pred=pred, entropy=round(float(result.entropy[i]), 6))
                    if label_value is not None:
                        labelled += 1
                        correct += int(pred == label_value)
                else:
                    record.update(pred=None, entropy=None, skip=result.skipped[i])
                if stream.domain is not None:
                    record["domain"] = int(stream.domain[idx])
                preds_file.write(json.dumps(record) + "\n")
            start = stop
            acc = f"acc {correct / labelled:.3f}" if labelled else ""
            progress.update(start, acc)
    progress.close()
    seconds = time.perf_counter() - started
    totals = adapter.totals
    summary = {
        "method": config.method,
        "samples": n,
        "skipped": int(totals["skipped"]),
        "accuracy": correct / labelled if labelled else None,
        "labelled": labelled,
        "updates": int(totals["updates"]),
        "forward_passes": int(totals["forward_passes"]),
        "backward_passes": int(totals["backward_passes"]),
        "gated_samples": _gated(out / "events.jsonl"),
        "resets": int(adapter.state.reset_count),
        "events": dict(adapter.event_counts),
        "seconds": round(seconds, 3),
        "samples_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _gated(events_path: Path) -> int:
    gated = 0
    with open(events_path) as handle:
        for line in handle:
            event = json.loads(line)
            if event["kind"] == "gate":
                gated += int(event.get("dropped", 0)) + int(event.get("unreliable", 0)) + int(event.get("redundant", 0))
    return gated
