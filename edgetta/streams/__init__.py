"""Streams: sources of items, preprocessing, the one batching loop, and sinks for records and events (numpy only;
OpenCV, edfio, pylsl and scipy are imported by the sources that need them, see docs/sources.md).

from edgetta.streams import NpzSource, JsonlSink, run_stream
summary = run_stream(adapter, NpzSource("stream.npz"), [JsonlSink("predictions.jsonl")])
source = open_source({"kind": "video", "path": "clip.avi"}, stream="cam", artifact=adapter.artifact)
"""

from edgetta.streams.backoff import Backoff
from edgetta.streams.edf import EdfSource
from edgetta.streams.extras import MissingExtra
from edgetta.streams.factory import KINDS, open_source
from edgetta.streams.images import ImageFolderSource
from edgetta.streams.items import Item, Position, Source
from edgetta.streams.loop import run_stream
from edgetta.streams.lsl import LslSource
from edgetta.streams.npy import NpySource
from edgetta.streams.preprocess import (
    Epocher,
    ImagePreprocessor,
    SignalPreprocessor,
    Unusable,
    image_preprocessor,
    signal_preprocessor,
)
from edgetta.streams.progress import Progress
from edgetta.streams.records import Record, Summary
from edgetta.streams.replay import prepare_output_dir, replay
from edgetta.streams.report import plural, skip_lines, summary_line
from edgetta.streams.sinks import Collector, CsvSink, EventLog, JsonlSink, Sink
from edgetta.streams.sources import ArraySource, NpzSource
from edgetta.streams.video import LiveVideoSource, VideoFileSource

__all__ = [
    "ArraySource",
    "Backoff",
    "Collector",
    "CsvSink",
    "EdfSource",
    "Epocher",
    "EventLog",
    "ImageFolderSource",
    "ImagePreprocessor",
    "Item",
    "JsonlSink",
    "KINDS",
    "LiveVideoSource",
    "LslSource",
    "MissingExtra",
    "NpySource",
    "NpzSource",
    "Position",
    "Progress",
    "Record",
    "SignalPreprocessor",
    "Sink",
    "Source",
    "Summary",
    "Unusable",
    "VideoFileSource",
    "image_preprocessor",
    "open_source",
    "plural",
    "prepare_output_dir",
    "replay",
    "run_stream",
    "signal_preprocessor",
    "skip_lines",
    "summary_line",
]
