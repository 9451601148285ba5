"""Video through OpenCV (``cv2.VideoCapture``): a recorded file, or a live camera / network stream.

:class:`VideoFileSource` (recorded, ``live = False``): positions are frame indices from 0; ``start=k``
yields frame k first. The end of the file ends the stream; a frame that cannot be decoded is an
``Item(x=None, error=...)`` at its index and reading goes on with the next one (``max_bad_frames`` failures in
a row end the stream: a truncated file). A file OpenCV cannot open at all gives one error item.

:class:`LiveVideoSource` (camera device or RTSP/HTTP URL, ``live = True``): positions are a frame counter
that continues after a reconnect and, with ``after=``, after a restart (frames in flight at a crash and those
that arrive while down are lost: a live source cannot rewind). A lost connection or device is reopened with
exponential backoff and jitter (:mod:`edgetta.streams.backoff`) until ``close()``.

Open and read timeouts are passed as ``CAP_PROP_OPEN_TIMEOUT_MSEC``/``CAP_PROP_READ_TIMEOUT_MSEC``; the
FFmpeg backend (files, URLs) honours them, camera backends (V4L2) may not, in which case a camera opens without
them and a read can block until the device answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edgetta.errors import DataError
from edgetta.streams.backoff import Backoff, EventHook, notify
from edgetta.streams.extras import need
from edgetta.streams.items import Item
from edgetta.streams.preprocess.base import Unusable

Preprocess = Callable[[np.ndarray], np.ndarray]
SEEK_MODES = ("auto", "decode")


def redact(url: str) -> str:
    """``url`` without a password, for names and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _params(cv2: Any, open_timeout: float | None, read_timeout: float | None) -> list[int]:
    params: list[int] = []
    if open_timeout is not None:
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000)]
    if read_timeout is not None:
        params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]
    return params


def _prepared(preprocess: Preprocess, frame: np.ndarray | None, position: int, what: str) -> Item:
    """The item for one decoded frame: preprocessed, or an error item with the reason."""
    if frame is None:
        return Item(None, position=position, error=f"{what}: frame {position} could not be decoded")
    try:
        return Item(preprocess(frame), position=position)
    except Unusable as exc:
        return Item(None, position=position, error=f"{what}: frame {position}: {exc}")
    except Exception as exc:  # noqa: BLE001 - an OpenCV error on one frame must not stop the stream
        return Item(None, position=position, error=f"{what}: frame {position} could not be preprocessed ({exc})")


class VideoFileSource:
    """Frames of a video file as model inputs (see the module docstring).

    Resuming (``start``): ``seek="auto"`` sets ``CAP_PROP_POS_FRAMES`` and checks that the capture reports that
    frame; when it does not (an inexact seek), the file is reopened and the first ``start`` frames are read and
    discarded (``grab`` without decoding). ``seek="decode"`` always reads and discards: slower, exact for
    every container. :attr:`seek_used` says which happened ("seek" or "decode")."""

    live = False
    kind = "video"

    def __init__(
        self,
        path: str | Path,
        preprocess: Preprocess,
        *,
        start: int = 0,
        seek: str = "auto",
        open_timeout: float | None = 10.0,
        read_timeout: float | None = 10.0,
        max_bad_frames: int = 5,
        name: str | None = None,
    ) -> None:
        self.cv2 = need("cv2", "video sources")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(
                f"video file {self.path} does not exist" + (" (it is a directory)" if self.path.is_dir() else "")
            )
        if start < 0:
            raise DataError(f"{self.path}: start must be a frame index >= 0, got {start}")
        if seek not in SEEK_MODES:
            raise ValueError(f"seek must be one of {SEEK_MODES}, got {seek!r}")
        self.preprocess = preprocess
        self.preprocessor = preprocess
        self.start, self.seek = int(start), seek
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.max_bad_frames = int(max_bad_frames)
        self.name = name or str(self.path)
        self.seek_used: str | None = None
        self.frame_count = self._count()
        self._stop = threading.Event()

    def _open(self) -> Any:
        cv2 = self.cv2
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, _params(cv2, self.open_timeout, self.read_timeout))

    def _count(self) -> int | None:
        cap = self._open()
        try:
            n = int(cap.get(self.cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
        return n if n > 0 else None

    @property
    def total(self) -> int | None:
        """Frames from ``start`` to the end as the container reports them (None when it does not)."""
        return None if self.frame_count is None else max(0, self.frame_count - self.start)

    def _seek(self, cap: Any) -> Any:
        """The capture positioned at frame ``start``, by seeking (verified) or by reading and discarding."""
        if self.start == 0:
            self.seek_used = "seek"
            return cap
        pos = self.cv2.CAP_PROP_POS_FRAMES
        if self.seek == "auto" and cap.set(pos, self.start) and int(round(cap.get(pos))) == self.start:
            self.seek_used = "seek"
            return cap
        cap.release()
        cap = self._open()
        for _ in range(self.start):
            if not cap.grab():
                break
        self.seek_used = "decode"
        return cap

    def __iter__(self) -> Iterator[Item]:
        cap = self._open()
        try:
            if not cap.isOpened():
                yield Item(None, position=self.start, error=f"{self.path}: not a video OpenCV can open or decode")
                return
            cap = self._seek(cap)
            index, bad = self.start, 0
            while not self._stop.is_set():
                if not cap.grab():
                    if self.frame_count is None or index >= self.frame_count or bad >= self.max_bad_frames:
                        return  # the end, or a truncated file after max_bad_frames error items
                    bad += 1
                    yield Item(
                        None, position=index, error=f"{self.path.name}: frame {index} could not be read (corrupt data)"
                    )
                    index += 1
                    continue
                ok, frame = cap.retrieve()
                bad = 0 if ok else bad + 1
                yield _prepared(self.preprocess, frame if ok else None, index, self.path.name)
                index += 1
        finally:
            cap.release()

    def close(self) -> None:
        """Stop an iteration in progress after its current frame."""
        self._stop.set()


class LiveVideoSource:
    """A camera (``device``: an index or a /dev path) or a network stream (``url``), reconnecting for ever
    (or ``backoff.attempts`` times in a row) until :meth:`close`.

    ``on_event(kind, message)`` hears "connected", "disconnected", "open_failed" and "gave_up". A frame that
    cannot be decoded or preprocessed is an error item; a failed read means the connection is lost and the
    source reconnects. When reconnecting gives up (``attempts`` reached) the stream ends with an error item."""

    live = True

    def __init__(
        self,
        target: int | str,
        preprocess: Preprocess,
        *,
        kind: str = "camera",
        backoff: Backoff | None = None,
        open_timeout: float | None = 10.0,
        read_timeout: float | None = 10.0,
        after: int | None = None,
        on_event: EventHook | None = None,
        name: str | None = None,
    ) -> None:
        self.cv2 = need("cv2", "camera and RTSP sources")
        self.target, self.kind = target, kind
        self.preprocess = preprocess
        self.preprocessor = preprocess
        self.backoff = backoff or Backoff()
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.first = 0 if after is None else int(after) + 1
        self.on_event = on_event
        shown = redact(target) if isinstance(target, str) else f"camera {target}"
        self.name = name or shown
        self.total = None
        self.connects = 0  # successful opens; reconnects = connects - 1
        self._stop = threading.Event()

    def _open(self) -> Any:
        cv2 = self.cv2
        params = _params(cv2, self.open_timeout, self.read_timeout)
        if self.kind == "camera":
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
            if not cap.isOpened():  # a backend that refuses the timeout parameters
                cap.release()
                cap = cv2.VideoCapture(self.target, cv2.CAP_ANY)
            return cap
        return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)

    def _connect(self) -> Any | None:
        """An open capture, retrying with backoff; None when closed or out of attempts."""
        failures = 0
        while not self._stop.is_set():
            cap = self._open()
            if cap.isOpened():
                self.connects += 1
                notify(self.on_event, "connected", f"{self.name}: opened")
                return cap
            cap.release()
            failures += 1
            notify(self.on_event, "open_failed", f"{self.name}: could not open (attempt {failures})")
            if self.backoff.exhausted(failures) or not self.backoff.wait(self._stop, failures - 1):
                return None
        return None

    def __iter__(self) -> Iterator[Item]:
        index = self.first
        while not self._stop.is_set():
            cap = self._connect()
            if cap is None:
                if not self._stop.is_set():
                    message = f"{self.name}: gave up after {self.backoff.attempts} failed attempts to open"
                    notify(self.on_event, "gave_up", message)
                    yield Item(None, position=index, error=message)
                return
            try:
                while not self._stop.is_set():
                    if not cap.grab():
                        notify(
                            self.on_event, "disconnected", f"{self.name}: read failed at frame {index}; reconnecting"
                        )
                        break
                    timestamp = time.time()
                    ok, frame = cap.retrieve()
                    item = _prepared(self.preprocess, frame if ok else None, index, self.name)
                    item.timestamp = timestamp
                    yield item
                    index += 1
            finally:
                cap.release()

    def close(self) -> None:
        """Stop reconnecting and end the iteration after the current read (which a read timeout bounds)."""
        self._stop.set()
