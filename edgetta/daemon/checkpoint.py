"""Per-stream checkpoints: adaptation state, source position, output offsets and counters, committed together.

A stream's folder ``<state_dir>/streams/<name>/`` holds ``checkpoint.json`` (the manifest) and the adapter
state it names (``adapter-<seq>.safetensors``). A commit writes the new adapter file under a fresh name
(fsync), then replaces the manifest atomically (temporary file, fsync, ``os.replace``, fsync of the folder),
and only then removes older adapter files. A crash at any moment leaves the previous manifest and the
files it names, or the new ones: never a manifest naming a state it was not written with.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetta.errors import CheckpointError

MANIFEST = "checkpoint.json"
FORMAT = "edgetta.daemon.checkpoint"
VERSION = 1


@dataclass
class StreamCheckpoint:
    """What a stream resumes from. ``position``: the source position of the last item written (None:
    nothing yet); ``output_offset``/``events_offset``: committed file lengths; ``runner``: the loop's
    state (:meth:`StreamRunner.state`); ``counters``: the daemon's own totals; ``settings``: the config the
    state was made with; ``preprocess``: the source's preprocessing state right after ``position`` (running
    z-score, causal filter; None when stateless); ``clean``: written at an orderly shutdown."""

    stream: str
    seq: int
    adapter_file: str
    position: Any
    output_offset: int
    events_offset: int
    runner: dict[str, Any]
    counters: dict[str, int]
    settings: dict[str, Any]
    preprocess: dict[str, Any] | None = None
    live: bool = False
    clean: bool = False
    written_at: float = field(default_factory=time.time)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old or the new file, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class CheckpointStore:
    """The checkpoint folder of one stream."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest.is_file()

    def load(self) -> StreamCheckpoint:
        """The committed checkpoint; a :class:`CheckpointError` says what is wrong with it."""
        try:
            data = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint in {self.folder}") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint manifest {self.manifest} is unreadable ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{self.manifest} is not an edgetta daemon checkpoint")
        if data.get("version") != VERSION:
            raise CheckpointError(f"{self.manifest} is version {data.get('version')!r}; this edgetta reads {VERSION}")
        try:
            fields = {k: v for k, v in data.items() if k not in ("format", "version")}
            checkpoint = StreamCheckpoint(**fields)
        except TypeError as exc:
            raise CheckpointError(f"{self.manifest} is incomplete ({exc})") from None
        if not (self.folder / checkpoint.adapter_file).is_file():
            raise CheckpointError(f"{self.manifest} names {checkpoint.adapter_file}, which is missing")
        return checkpoint

    def adapter_path(self, checkpoint: StreamCheckpoint) -> Path:
        return self.folder / checkpoint.adapter_file

    def commit(self, checkpoint: StreamCheckpoint, adapter: Any) -> None:
        """Write ``adapter``'s state under a fresh name, then the manifest naming it, then drop older states."""
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint.adapter_file = f"adapter-{checkpoint.seq:08d}.safetensors"
        checkpoint.written_at = time.time()
        adapter.save(self.folder / checkpoint.adapter_file)
        write_json_atomic(self.manifest, {"format": FORMAT, "version": VERSION, **asdict(checkpoint)})
        self._remove_stale(keep=checkpoint.adapter_file)

    def _remove_stale(self, keep: str) -> None:
        for path in self.folder.iterdir():
            stale_state = path.name.startswith("adapter-") and path.name != keep
            if stale_state or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove this stream's checkpoint (``--fresh``)."""
        if not self.folder.is_dir():
            return
        self.manifest.unlink(missing_ok=True)  # first: a manifest never outlives the state it names
        _fsync_dir(self.folder)
        for path in self.folder.iterdir():
            if path.name.startswith("adapter-") or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
