"""Engines behind one protocol (``Engine``, edgetta.engines.base): ONNX Runtime now, TensorRT later.

``import edgetta.engines`` loads only the protocol and the options; ``OrtEngine`` (and onnxruntime) load on
first use. Never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetta.engines.base import Engine
from edgetta.engines.options import EngineOptions

if TYPE_CHECKING:
    from edgetta.engines.ort import OrtEngine

__all__ = ["Engine", "EngineOptions", "OrtEngine"]


def __getattr__(name: str) -> Any:
    if name == "OrtEngine":
        from edgetta.engines.ort import OrtEngine

        return OrtEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
