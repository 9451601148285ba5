"""Stage messages of an export: prepare, trace, convert, optimise, verify, each with its wall time.

``export_model(progress=...)`` takes None (print to stderr only when stderr is a terminal), True (always
print), False (never) or a callable ``(stage, seconds)`` called once each stage has finished.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

ProgressCallback = Callable[[str, float], None]
ProgressSetting = bool | ProgressCallback | None

STAGE_TEXT = {
    "prepare": "prepare   rewrite norm layers, check the model",
    "trace": "trace     joint forward + backward graph",
    "convert": "convert   ONNX translation",
    "optimise": "optimise  constant folding, inference graph, weights file",
    "fisher": "fisher    EATA Fisher diagonal from the calibration set",
    "verify": "verify    parity against float64 torch",
}


def printer(stream: TextIO) -> ProgressCallback:
    """A callback writing one line per finished stage to ``stream``."""

    def report(stage: str, seconds: float) -> None:
        text = STAGE_TEXT.get(stage, stage)
        stream.write(f"edgetta export: {text:<62} {seconds:6.1f} s\n")
        stream.flush()

    return report


def resolve(setting: ProgressSetting) -> ProgressCallback | None:
    """The callback for an ``export_model(progress=...)`` setting (None: report nothing)."""
    if callable(setting):
        return setting
    if setting is None:
        setting = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return printer(sys.stderr) if setting else None


class Progress:
    """Times named stages and reports each one to a callback (or to nobody)."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        if self.callback is not None:
            self.callback(name, elapsed)
