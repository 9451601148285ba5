"""The Engine protocol on ONNX Runtime: providers, the rewritten-graph cache, graph rewrites, IOBinding."""

from edgetta.engines.ort.binding import GraphVariant
from edgetta.engines.ort.engine import OrtEngine
from edgetta.engines.ort.providers import CPU, CUDA, TENSORRT, provider_options, resolve_providers

__all__ = ["CPU", "CUDA", "GraphVariant", "OrtEngine", "TENSORRT", "provider_options", "resolve_providers"]
