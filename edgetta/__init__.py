"""edgetta: keep deployed networks accurate under distribution shift with torch-free test-time adaptation.

The public API, imported lazily so that ``import edgetta`` stays cheap::

    from edgetta import Adapter, load_config

    adapter = Adapter("artifact_dir", load_config(preset="tent"))
    result = adapter.process(batch)          # predictions, entropies, skip reasons, rail events
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Adapter": "edgetta.runtime.adapter",
    "BatchResult": "edgetta.runtime.adapter",
    "RuntimeConfig": "edgetta.runtime.config",
    "load_config": "edgetta.runtime.config",
    "preset_names": "edgetta.runtime.config",
    "Artifact": "edgetta.contract",
    "load_artifact": "edgetta.contract",
    "Engine": "edgetta.engines",
    "EngineOptions": "edgetta.engines",
    "OrtEngine": "edgetta.engines",
    "Item": "edgetta.streams",
    "Source": "edgetta.streams",
    "ArraySource": "edgetta.streams",
    "NpzSource": "edgetta.streams",
    "Sink": "edgetta.streams",
    "JsonlSink": "edgetta.streams",
    "run_stream": "edgetta.streams",
    "open_source": "edgetta.streams",
    "Event": "edgetta.safety",
    "EdgettaError": "edgetta.errors",
}

__all__ = [
    "Adapter",
    "ArraySource",
    "Artifact",
    "BatchResult",
    "EdgettaError",
    "Engine",
    "EngineOptions",
    "Event",
    "Item",
    "JsonlSink",
    "NpzSource",
    "OrtEngine",
    "RuntimeConfig",
    "Sink",
    "Source",
    "__version__",
    "load_artifact",
    "load_config",
    "open_source",
    "preset_names",
    "run_stream",
]

if TYPE_CHECKING:
    from edgetta.contract import Artifact, load_artifact
    from edgetta.engines import Engine, EngineOptions, OrtEngine
    from edgetta.errors import EdgettaError
    from edgetta.runtime.adapter import Adapter, BatchResult
    from edgetta.runtime.config import RuntimeConfig, load_config, preset_names
    from edgetta.safety import Event
    from edgetta.streams import ArraySource, Item, JsonlSink, NpzSource, Sink, Source, open_source, run_stream


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgetta' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
