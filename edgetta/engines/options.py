"""``EngineOptions``: how an engine builds its sessions (providers, threads, caches, graph rewrites)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineOptions:
    """How to build sessions. ``providers``: names in priority order, or "auto" (TensorRT > CUDA > CPU,
    whatever this onnxruntime build offers). ``max_batch`` sets the TensorRT shape profile.
    ``optimize``: rewrite the graphs for the CPU provider (ignored on other providers).
    ``cache_dir``: TensorRT engine caches and the rewritten-graph cache (``<cache_dir>/graphs``).
    ``extra["session_config"]``: ORT session config entries, e.g. {"session.intra_op.allow_spinning": "0"};
    ``extra["session_options"]``: ORT SessionOptions attributes; ``extra["graph_cache"]``: a folder for the
    rewritten graphs, or False for none."""

    providers: Sequence[str] | str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    cache_dir: str | None = None
    max_batch: int = 64
    fp16: bool = False
    optimize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
