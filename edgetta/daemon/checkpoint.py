"""Per-stream checkpoints: adaptation state, source position, output offsets and counters, committed together.

A stream's folder ``<state_dir>/streams/<name>/`` holds ``checkpoint.json`` (the manifest) and the adapter
state it names (``adapter-<seq>.safetensors``). A commit fsyncs the outputs up to the offsets the manifest
will record, writes the adapter state under a fresh name (fsync), then replaces the manifest atomically
(temporary file, fsync, ``os.replace``, fsync of the folder), and only then removes older adapter files. A
crash at any moment leaves the previous manifest and the files it names, or the new ones: never a manifest
naming a state it was not written with, nor offsets beyond what reached the disk.

The :class:`Committer` does that disk work in a background thread, one commit at a time and in order, on a
copy of the adapter state taken between two batches (:class:`AdapterState`), so a stream does not wait for
the disk.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.atomic_io import fsync_dir, write_atomic
from edgetta.errors import CheckpointError
from edgetta.runtime.checkpoint import save_checkpoint

MANIFEST = "checkpoint.json"
FORMAT = "edgetta.daemon.checkpoint"
VERSION = 1


@dataclass
class StreamCheckpoint:
    """What a stream resumes from. ``position``: the source position of the last item written (None:
    nothing yet); ``output_offset``/``events_offset``: committed file lengths; ``runner``: the loop's
    state (:meth:`StreamRunner.state`); ``counters``: the daemon's own totals; ``settings``: the config the
    state was made with; ``preprocess``: the source's preprocessing state right after ``position`` (running
    z-score, causal filter; None when stateless); ``clean``: written at an orderly shutdown; ``sync``: the
    cloud bundle the adapter state was made on (``{"bundle_version": N}``; None without a sync block)."""

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
    sync: dict[str, Any] | None = None  # cloud sync: {"bundle_version": N} the adapter state was made on
    written_at: float = field(default_factory=time.time)


@dataclass
class AdapterState:
    """A copy of an adapter's checkpoint payload (what ``Adapter.save`` writes), taken between two calls, so it
    can be written from another thread while the adapter goes on."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]
    artifact_id: str

    @classmethod
    def of(cls, adapter: Any) -> AdapterState:
        tensors, meta = adapter.checkpoint_payload()
        copied = {k: np.array(v, copy=True) for k, v in tensors.items()}
        return cls(copied, copy.deepcopy(meta), adapter.artifact.identity)

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.tensors, self.meta, artifact_id=self.artifact_id)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old or the new file, never a torn one."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


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

    def commit(self, checkpoint: StreamCheckpoint, state: AdapterState) -> None:
        """Write the adapter ``state`` under a fresh name, then the manifest naming it, then drop older states."""
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint.adapter_file = f"adapter-{checkpoint.seq:08d}.safetensors"
        checkpoint.written_at = time.time()
        state.save(self.folder / checkpoint.adapter_file)
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
        fsync_dir(self.folder)
        for path in self.folder.iterdir():
            if path.name.startswith("adapter-") or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)


class Committer:
    """Commits a stream's checkpoints in a background thread, one at a time, in order. ``files`` of a commit
    (the outputs, each with ``fsync()``) are synced before the manifest records their offsets. A failed
    commit is raised by the next :meth:`submit`, :meth:`wait` or :meth:`check`; ``on_done(seconds)`` hears
    how long each commit took."""

    def __init__(self, store: CheckpointStore, on_done: Callable[[float], None] | None = None) -> None:
        self.store = store
        self.on_done = on_done
        self._cond = threading.Condition()
        self._job: tuple[StreamCheckpoint, AdapterState, Sequence[Any]] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"edgetta-commit-{store.folder.name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._job is not None

    def check(self) -> None:
        """Raise the error of a failed commit (once)."""
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def submit(self, checkpoint: StreamCheckpoint, state: AdapterState, files: Sequence[Any] = ()) -> None:
        """Queue one commit (waiting for the previous one to finish)."""
        with self._cond:
            while self._job is not None:
                self._cond.wait()
            self._job = (checkpoint, state, list(files))
            self._cond.notify_all()
        self.check()

    def wait(self) -> None:
        """Until no commit is in flight; raises the error of a failed one."""
        with self._cond:
            while self._job is not None:
                self._cond.wait()
        self.check()

    def close(self) -> None:
        with self._cond:
            while self._job is not None:
                self._cond.wait()
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._job is None:
                    return
                checkpoint, state, files = self._job
            started = time.perf_counter()
            try:
                for file in files:
                    file.fsync()
                self.store.commit(checkpoint, state)
            except BaseException as exc:  # reported to the stream by check()
                with self._cond:
                    self._error = exc
            else:
                if self.on_done is not None:
                    self.on_done(time.perf_counter() - started)
            with self._cond:
                self._job = None
                self._cond.notify_all()
