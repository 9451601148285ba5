"""``edgetta replay`` as a function: a source through an adapter into an output directory holding
``predictions.jsonl`` (one record per input), ``events.jsonl`` and ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetta.errors import OutputError
from edgetta.streams.items import Source
from edgetta.streams.loop import method_name, run_stream
from edgetta.streams.progress import Progress
from edgetta.streams.records import Summary
from edgetta.streams.sinks import EventLog, JsonlSink, Sink

OUTPUT_FILES = ("predictions.jsonl", "events.jsonl", "summary.json")


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output directory (and parents); an :class:`OutputError` says why it cannot be."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} is an existing file; give a directory (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise OutputError(f"cannot create output directory {out}: {reason}; choose a writable path") from exc
    return out


def replay(
    adapter: Any,
    source: Source,
    out_dir: str | Path,
    *,
    episodic: bool = False,
    probabilities: bool = False,
    batch_size: int | None = None,
) -> Summary:
    """Run ``source`` through ``adapter`` with :func:`run_stream`, writing the files of :data:`OUTPUT_FILES`."""
    out = prepare_output_dir(out_dir)
    sinks: list[Sink] = []
    progress = Progress(getattr(source, "total", None), method_name(adapter))
    try:
        sinks.append(JsonlSink(out / "predictions.jsonl", probabilities=probabilities))
        sinks.append(EventLog(out / "events.jsonl"))
        summary = run_stream(adapter, source, sinks, batch_size=batch_size, episodic=episodic, progress=progress)
    finally:
        progress.close()
        for sink in sinks:
            sink.close()
    try:
        (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {out / 'summary.json'}: {exc.strerror or exc}") from exc
    return summary
