"""ONNX Runtime execution providers and session options for an artifact's graphs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgetta.contract import Artifact
from edgetta.engines.feed import DataInputs
from edgetta.engines.options import EngineOptions
from edgetta.errors import ConfigError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def resolve_providers(options: EngineOptions) -> list[str]:
    """The providers to use, in priority order; an unavailable one is a ConfigError naming the key."""
    available = ort.get_available_providers()
    if options.providers == "auto":
        return [p for p in (TENSORRT, CUDA, CPU) if p in available]
    requested = [options.providers] if isinstance(options.providers, str) else list(options.providers)
    missing = [p for p in requested if p not in available]
    if missing:
        raise ConfigError(
            f"engine.providers: {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT or use 'auto'"
        )
    return requested


def provider_options(provider: str, options: EngineOptions, artifact: Artifact, which: str) -> dict[str, Any]:
    """TensorRT: engine and timing caches plus one fixed shape profile (batch 1..max_batch) per input."""
    if provider != TENSORRT:
        return {}
    cache = Path(options.cache_dir or (artifact.path / ".trt_cache")) / which
    cache.mkdir(parents=True, exist_ok=True)
    item = "x".join(str(d) for d in artifact.input_shape[1:])
    inputs = DataInputs.of(artifact)
    shapes = {}
    for label, batch in (("min", 1), ("opt", options.max_batch), ("max", options.max_batch)):
        parts = [f"{inputs.data}:{batch}x{item}"]
        if which == "adapt":
            shapes_at = inputs.loss_input_shapes(batch)
            parts += [f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes_at.items()]
        shapes[label] = ",".join(parts)
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "True" if options.fp16 else "False",
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def session_options(options: EngineOptions, optimize: bool) -> ort.SessionOptions:
    """ORT session options. An engine that rewrites its graphs (``optimize``) runs every session with: no
    memory pattern (it keeps a second, pre-planned copy of every activation: about twice the resident memory
    of the adapt graph), priority-based node order (ORT then follows the rewritten graph's order, which keeps
    only what the backward needs alive) and no spin-waiting worker threads (on a shared or small CPU spinning
    threads steal the cores the work needs). ``extra`` overrides any of these; without ``optimize``, ORT's defaults."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads or int(os.environ.get("EDGETTA_THREADS", "0"))
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    config: dict[str, str] = {}
    if optimize:
        so.enable_mem_pattern = False
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        config["session.intra_op.allow_spinning"] = "0"
    config.update({str(k): str(v) for k, v in dict(options.extra.get("session_config", {})).items()})
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    for key, value in dict(options.extra.get("session_options", {})).items():
        setattr(so, key, value)
    return so
