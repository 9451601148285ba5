"""The daemon's door to sources: checks a stream's ``source`` mapping at config load and opens it.

Sources and their preprocessing live in :mod:`edgetta.streams` (:func:`edgetta.streams.factory.open_source`);
this module resolves relative paths against the config file, checks the keys each kind takes at load, and
opens a source so that it resumes right after the item a checkpoint committed (``after=``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetta.errors import ConfigError
from edgetta.streams.factory import KIND_KEYS, KINDS, LIVE_KINDS, open_source
from edgetta.streams.items import Position, Source

PATH_KEYS = ("path",)

# open_stream_source's signature: (spec, preprocess, *, stream, artifact, after, on_event) -> Source. A daemon may
# be given another (Daemon(..., open_source=...)) to run on sources of the embedding program's own.
SourceOpener = Callable[..., Source]


def check_source_spec(spec: Any, where: str, base: Path) -> dict[str, Any]:
    """The source mapping with relative paths made absolute (against ``base``); its kind and keys checked.
    Values are checked when the source is opened, at daemon start."""
    if not isinstance(spec, dict):
        kinds = ", ".join(KINDS)
        raise ConfigError(f"{where}: must be a mapping with a kind ({kinds}), e.g. {{kind: video, path: clip.mp4}}")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    allowed = ("kind", *(k for k in KIND_KEYS[kind.lower()] if k != "preprocess"))
    for key in spec:
        if key not in allowed:
            hint = " (preprocess belongs to the stream, next to source)" if key == "preprocess" else ""
            raise ConfigError(f"{where}.{key}: unknown key for kind {kind}{hint}; allowed here: {', '.join(allowed)}")
    out = dict(spec)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and "://" not in value:
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else base / path)
    return out


def check_preprocess(spec: dict[str, Any], preprocess: dict[str, Any], where: str) -> None:
    """``preprocess`` applies to the kinds whose factory entry takes it (not to npz/npy arrays)."""
    kind = str(spec.get("kind", "")).lower()
    if preprocess and "preprocess" not in KIND_KEYS.get(kind, ()):
        raise ConfigError(f"{where}: {kind} arrays are model inputs as they are; remove preprocess")


def is_live_kind(spec: dict[str, Any]) -> bool:
    """Whether a source of this kind is live (a camera, an RTSP URL, an LSL inlet, a watched folder)."""
    return spec.get("kind") in LIVE_KINDS or bool(spec.get("watch"))


def open_stream_source(
    spec: dict[str, Any],
    preprocess: dict[str, Any],
    *,
    stream: str,
    artifact: Any,
    after: Position | None,
    on_event: Callable[[str, str], None] | None = None,
) -> Source:
    """Open a stream's source (``stream``: its key in messages, e.g. ``0`` for ``streams[0]``), continuing right
    after the item at ``after`` (None: from the start; live sources only continue their counters)."""
    full = dict(spec)
    if preprocess:
        full["preprocess"] = preprocess
    try:
        return open_source(full, stream=stream, artifact=artifact, after=after, on_event=on_event)
    except ConfigError as exc:  # preprocess sits next to source in a daemon config: name it where it is written
        where = f"streams[{stream}]"
        raise ConfigError(str(exc).replace(f"{where}.source.preprocess", f"{where}.preprocess")) from None
