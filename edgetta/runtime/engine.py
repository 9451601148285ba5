"""Engine sessions: run an artifact's graphs on ONNX Runtime with chosen execution providers.

Parameters are graph inputs, so one session serves every method and every parameter state.
CUDA and TensorRT providers are configured when onnxruntime offers them (never run on a GPU here:
see README "Known limits").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgetta.errors import ConfigError
from edgetta.runtime.artifact import Artifact

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class EngineOptions:
    """How to build sessions. ``providers``: names in priority order, or "auto" (TensorRT > CUDA > CPU,
    whatever this onnxruntime build offers). ``max_batch`` sets the TensorRT shape profile."""

    providers: Sequence[str] | str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    cache_dir: str | None = None
    max_batch: int = 64
    fp16: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_providers(options: EngineOptions) -> list[str]:
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
    item = ["x".join(str(d) for d in artifact.input_shape[1:])]
    shapes = {}
    for label, batch in (("min", 1), ("opt", options.max_batch), ("max", options.max_batch)):
        parts = [f"{artifact.input_name}:{batch}x{item[0]}"]
        if which == "adapt":
            parts += [f"entropy_weight:{batch}", f"ce_weight:{batch}"]
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


class OrtEngine:
    """Runs ``infer.onnx`` and (lazily) ``adapt.onnx``. All arrays are numpy float32."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        self.artifact = artifact
        self.options = options or EngineOptions()
        self.providers = resolve_providers(self.options)
        self.infer_session = self._session("infer")
        self._adapt_session: ort.InferenceSession | None = None
        self.param_inputs = [
            i.name
            for i in self.infer_session.get_inputs()
            if i.name not in (artifact.input_name, artifact.manifest["inputs"]["bn_alpha"])
        ]
        self.infer_outputs = [o.name for o in self.infer_session.get_outputs()]

    def _session(self, which: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.options.intra_op_threads or int(os.environ.get("EDGETTA_THREADS", "0"))
        so.inter_op_num_threads = self.options.inter_op_threads
        so.log_severity_level = 3
        providers = [(p, provider_options(p, self.options, self.artifact, which)) for p in self.providers]
        return ort.InferenceSession(str(self.artifact.graph_path(which)), so, providers=providers)

    @property
    def adapt_session(self) -> ort.InferenceSession:
        if self._adapt_session is None:
            self._adapt_session = self._session("adapt")
            self.adapt_outputs = [o.name for o in self._adapt_session.get_outputs()]
        return self._adapt_session

    def _feed(self, x: np.ndarray, params: dict[str, np.ndarray], bn_alpha: float) -> dict[str, np.ndarray]:
        feed = {name: params[name] for name in self.param_inputs}
        feed[self.artifact.input_name] = x
        feed[self.artifact.manifest["inputs"]["bn_alpha"]] = np.asarray(bn_alpha, dtype=np.float32)
        return feed

    def infer(
        self, x: np.ndarray, params: dict[str, np.ndarray], bn_alpha: float, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else self.infer_outputs
        values = self.infer_session.run(names, self._feed(x, params, bn_alpha))
        return dict(zip(names, values))

    def adapt(
        self,
        x: np.ndarray,
        params: dict[str, np.ndarray],
        bn_alpha: float,
        entropy_weight: np.ndarray,
        ce_weight: np.ndarray,
    ) -> dict[str, np.ndarray]:
        session = self.adapt_session
        feed = self._feed(x, params, bn_alpha)
        inputs = self.artifact.manifest["inputs"]
        feed[inputs["entropy_weight"]] = np.ascontiguousarray(entropy_weight, dtype=np.float32)
        feed[inputs["ce_weight"]] = np.ascontiguousarray(ce_weight, dtype=np.float32)
        values = session.run(self.adapt_outputs, feed)
        return dict(zip(self.adapt_outputs, values))
