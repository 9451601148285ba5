"""One source from the YAML mapping of a stream: ``open_source(spec, stream="cam", artifact=artifact)``.

``spec`` is ``{kind: video|camera|rtsp|images|edf|lsl|npz|npy, <kind's keys>, preprocess: {...}}`` (keys per kind
in :data:`KIND_KEYS` and docs/sources.md). Every key is checked; a ConfigError names it as
``streams[<stream>].source.<key>`` with the allowed values. A kind whose library is missing raises
:class:`~edgetta.streams.extras.MissingExtra` naming the extra to install.

Resuming: ``start`` is the position of the first item to yield; ``after`` the position of the last item already
committed (what a checkpoint records), from which the factory derives ``start`` per kind. Live kinds cannot
rewind: ``after`` only makes their counters continue. Every returned source has ``name``, ``live``, ``kind``,
``preprocessor`` (None for arrays) with ``state()``/``load_state()``, ``total`` (None when unknown), iteration
and ``close()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetta.errors import ConfigError
from edgetta.streams.backoff import EventHook, read_backoff
from edgetta.streams.items import Position, Source
from edgetta.streams.spec import SpecReader

KINDS = ("video", "camera", "rtsp", "images", "edf", "lsl", "npz", "npy")
LIVE_KINDS = ("camera", "rtsp", "lsl")  # and images with watch: true
_TIMEOUTS = ("open_timeout", "read_timeout")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "video": ("path", "seek", *_TIMEOUTS, "max_bad_frames", "preprocess"),
    "camera": ("device", *_TIMEOUTS, "reconnect", "preprocess"),
    "rtsp": ("url", *_TIMEOUTS, "reconnect", "preprocess"),
    "images": ("path", "watch", "poll", "extensions", "preprocess"),
    "edf": ("path", "channels", "pace", "preprocess"),
    "lsl": ("name", "type", "channels", "resolve_timeout", "buffer", "reconnect", "preprocess"),
    "npz": ("path",),
    "npy": ("path",),
}
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "srt", "udp", "tcp")


def _kind(spec: Any, where: str) -> str:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be a mapping with a 'kind' ({', '.join(KINDS)}), got {spec!r}")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind.lower()


def _path(reader: SpecReader, what: str) -> Path:
    return Path(reader.string("path", meaning=f"the {what}")).expanduser()


def _channels(reader: SpecReader, required: bool) -> list[str] | None:
    value = reader.raw("channels")
    if value is None:
        if required:
            raise ConfigError(f"{reader.where}: missing key 'channels' (the signal label(s) to read, e.g. EEG Fpz-Cz)")
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise reader.error("channels", f"must be a channel label or a list of labels, got {value!r}")
    return names


def _timeouts(reader: SpecReader) -> dict[str, float | None]:
    return {k: reader.number(k, 10.0, above=0.0, meaning="seconds") for k in _TIMEOUTS}


def _row(value: Position | None, where: str, key: str) -> int | None:
    """A row/frame/epoch index from an int or a ``"name:17"`` position."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(?:.*:)?(\d+)", value)
        if match:
            return int(match.group(1))
    raise ConfigError(f"{where}: {key} {value!r} is not a position of this source (an index >= 0 or 'file:index')")


def _start(kind: str, start: Position | None, after: Position | None, where: str) -> Any:
    """The ``start`` argument for a recorded kind, from ``start`` or from ``after`` (the last committed)."""
    if start is not None and after is not None:
        raise ConfigError(f"{where}: give start (first item to yield) or after (last item committed), not both")
    if kind == "images":
        return start
    begin = _row(start, where, "start")
    done = _row(after, where, "after")
    return done + 1 if done is not None else (begin or 0)


def open_source(
    spec: Mapping[str, Any],
    *,
    stream: str,
    artifact: Any,
    start: Position | None = None,
    after: Position | None = None,
    on_event: EventHook | None = None,
) -> Source:
    """The source ``spec`` describes, for the model ``artifact`` (its input shape and manifest preprocessing).

    ``start``/``after``: see the module docstring. ``on_event(kind, message)`` hears a live source's
    connects, disconnects and give-ups."""
    where = f"streams[{stream}].source"
    kind = _kind(spec, where)
    reader = SpecReader(spec, where, ("kind", *KIND_KEYS[kind]))
    if kind in ("npz", "npy") and "preprocess" in spec:
        raise reader.error("preprocess", f"{kind} arrays are model inputs as they are; preprocess does not apply")
    reader.finish()  # a misspelt key first: "channel: unknown key" says more than "missing key 'channels'"
    if kind in ("npz", "npy"):
        return _arrays(kind, reader, _start(kind, start, after, where))
    if kind in ("video", "camera", "rtsp", "images"):
        return _image_source(kind, reader, artifact, start, after, on_event)
    return _signal_source(kind, reader, artifact, start, after, on_event)


def _arrays(kind: str, reader: SpecReader, start: int) -> Source:
    path = _path(reader, f".{kind} file")
    reader.finish()
    if kind == "npz":
        from edgetta.streams.sources import NpzSource

        source: Any = NpzSource(path, start=start)
        source.live, source.kind = False, "npz"
    else:
        from edgetta.streams.npy import NpySource

        source = NpySource(path, start=start)
    source.preprocessor = None
    return source


def _image_source(
    kind: str,
    reader: SpecReader,
    artifact: Any,
    start: Position | None,
    after: Position | None,
    on_event: EventHook | None,
) -> Source:
    from edgetta.streams.preprocess.image import image_preprocessor

    where = reader.where
    if kind == "video":
        from edgetta.streams.video import SEEK_MODES, VideoFileSource

        path = _path(reader, "video file")
        seek = reader.choice("seek", SEEK_MODES, "auto")
        timeouts = _timeouts(reader)
        max_bad = reader.number("max_bad_frames", 5, minimum=1, integer=True)
        prep = image_preprocessor(reader.raw("preprocess"), artifact, where=reader.key("preprocess"))
        reader.finish()
        first = _start(kind, start, after, where)
        return VideoFileSource(path, prep, start=first, seek=seek, max_bad_frames=max_bad, **timeouts)
    if kind == "images":
        from edgetta.streams.images import EXTENSIONS, ImageFolderSource

        path = _path(reader, "image folder")
        watch = reader.boolean("watch", False)
        poll = reader.number("poll", 1.0, above=0.0, meaning="seconds between listings of a watched folder")
        if reader.has("poll") and not watch:
            raise reader.error("poll", "only applies with watch: true")
        extensions = _extensions(reader, EXTENSIONS)
        prep = image_preprocessor(reader.raw("preprocess"), artifact, where=reader.key("preprocess"))
        reader.finish()
        if start is not None and after is not None:
            raise ConfigError(f"{where}: give start (first item to yield) or after (last item committed), not both")
        return ImageFolderSource(
            path,
            prep,
            start=start,
            after=None if after is None else str(after),
            watch=watch,
            poll=poll,
            extensions=extensions,
        )
    from edgetta.streams.video import LiveVideoSource

    if kind == "camera":
        target = _device(reader)
    else:
        target = _url(reader)
    timeouts = _timeouts(reader)
    backoff = read_backoff(reader)
    prep = image_preprocessor(reader.raw("preprocess"), artifact, where=reader.key("preprocess"))
    reader.finish()
    return LiveVideoSource(
        target,
        prep,
        kind=kind,
        backoff=backoff,
        after=_row(after, where, "after"),
        on_event=on_event,
        **timeouts,
    )


def _extensions(reader: SpecReader, default: tuple[str, ...]) -> tuple[str, ...]:
    value = reader.raw("extensions")
    if value is None:
        return default
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip(".") for v in value):
        raise reader.error("extensions", f"must be a list of file extensions like [.png, .jpg], got {value!r}")
    return tuple(v if v.startswith(".") else f".{v}" for v in value)


def _device(reader: SpecReader) -> int | str:
    value = reader.required("device", "a camera index like 0, or a device path like /dev/video0")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith("/dev/"):
        return value
    raise reader.error("device", f"must be a camera index >= 0 or a path under /dev/, got {value!r}")


def _url(reader: SpecReader) -> str:
    value = reader.string("url", meaning="a stream URL like rtsp://host:554/stream")
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in URL_SCHEMES:
        raise reader.error("url", f"must be a URL with one of the schemes {', '.join(URL_SCHEMES)}, got {value!r}")
    return value


def _signal_source(
    kind: str,
    reader: SpecReader,
    artifact: Any,
    start: Position | None,
    after: Position | None,
    on_event: EventHook | None,
) -> Source:
    from edgetta.streams.preprocess.signal import signal_preprocessor

    where = reader.where
    if kind == "edf":
        from edgetta.streams.edf import PACES, EdfSource

        path = _path(reader, "EDF file")
        channels = _channels(reader, required=True)
        pace = reader.choice("pace", PACES, "fast")
        prep = signal_preprocessor(
            reader.raw("preprocess"), artifact, live=False, channels=channels, where=reader.key("preprocess")
        )
        reader.finish()
        first = _start(kind, start, after, where)
        return EdfSource(path, prep, channels=channels or [], pace=pace or "fast", start=first)
    from edgetta.streams.lsl import LslSource

    names = {k: reader.string(k, None, meaning=f"the LSL stream's {k}") for k in ("name", "type")}
    if not any(names.values()):
        raise ConfigError(f"{where}: give the LSL stream's name or type (or both) to resolve it")
    for key, value in names.items():
        if value and "'" in value:
            raise reader.error(key, f"cannot contain a quote ('), got {value!r}")
    channels = _channels(reader, required=False)
    resolve_timeout = reader.number("resolve_timeout", 10.0, above=0.0, meaning="seconds per resolve attempt")
    buffer = reader.number("buffer", 360.0, minimum=1.0, meaning="seconds the inlet buffers")
    backoff = read_backoff(reader)
    prep = signal_preprocessor(
        reader.raw("preprocess"), artifact, live=True, channels=channels, where=reader.key("preprocess")
    )
    reader.finish()
    return LslSource(
        prep,
        stream_name=names["name"],
        stream_type=names["type"],
        resolve_timeout=resolve_timeout,
        buffer=buffer,
        backoff=backoff,
        after=_row(after, where, "after"),
        on_event=on_event,
    )
