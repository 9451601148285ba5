"""Temporary re-export: the engine now lives in edgetta.engines (import it from there)."""

from edgetta.engines import EngineOptions  # noqa: F401
from edgetta.engines.ort import CPU, TENSORRT, OrtEngine, provider_options, resolve_providers  # noqa: F401
