"""Streams: sources of items, the one batching loop, and sinks for records and events (numpy only).

from edgetta.streams import NpzSource, JsonlSink, run_stream
summary = run_stream(adapter, NpzSource("stream.npz"), [JsonlSink("predictions.jsonl")])
"""

from edgetta.streams.items import Item, Position, Source
from edgetta.streams.loop import run_stream
from edgetta.streams.progress import Progress
from edgetta.streams.records import Record, Summary
from edgetta.streams.replay import prepare_output_dir, replay
from edgetta.streams.report import plural, skip_lines, summary_line
from edgetta.streams.sinks import Collector, CsvSink, EventLog, JsonlSink, Sink
from edgetta.streams.sources import ArraySource, NpzSource

__all__ = [
    "ArraySource",
    "Collector",
    "CsvSink",
    "EventLog",
    "Item",
    "JsonlSink",
    "NpzSource",
    "Position",
    "Progress",
    "Record",
    "Sink",
    "Source",
    "Summary",
    "plural",
    "prepare_output_dir",
    "replay",
    "run_stream",
    "skip_lines",
    "summary_line",
]
