"""Engine sessions: run an artifact's graphs on ONNX Runtime with chosen execution providers.

Parameters are graph inputs, so one session serves every method and every parameter state.
CUDA and TensorRT providers are configured when onnxruntime offers them (never run on a GPU here:
see README "Known limits").

On the CPU provider the graphs are rewritten before ORT sees them (edgetta.kernels.graph, see
docs/speed.md): fused BatchNormalization forward and a closed-form BN backward instead of the traced
plain ops, cheap ReLU gradients, ``bn_alpha`` fixed when it is 0 or 1 (one session per value, built
on first use) and graph outputs pruned to what a call asks for. Each rewritten graph is checked
against the exported one on a small batch when it is built; on any mismatch the engine warns and
runs the exported graph. ``EngineOptions(optimize=False)`` turns all of this off.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import edgetta
from edgetta.errors import ConfigError
from edgetta.runtime.artifact import Artifact

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
SPECIALIZED_ALPHAS = (0.0, 1.0)
VERIFY_BATCH = 2
VERIFY_RTOL = 1e-3


@dataclass(frozen=True)
class EngineOptions:
    """How to build sessions. ``providers``: names in priority order, or "auto" (TensorRT > CUDA > CPU,
    whatever this onnxruntime build offers). ``max_batch`` sets the TensorRT shape profile.
    ``optimize``: rewrite the graphs for the CPU provider (ignored on other providers).
    ``extra["session_config"]``: ORT session config entries, e.g. {"session.intra_op.allow_spinning": "0"}."""

    providers: Sequence[str] | str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    cache_dir: str | None = None
    max_batch: int = 64
    fp16: bool = False
    optimize: bool = True
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


@dataclass
class GraphVariant:
    """One session: a graph (``which``) for one ``bn_alpha`` (None: an input) and one set of outputs.
    ``report``: what the rewrite did (edgetta.kernels.graph.RewriteReport as a dict), None when not rewritten.
    ``bound``: the parameter arrays bound (zero-copy) to ``binding``, kept until a call passes another array."""

    which: str
    session: ort.InferenceSession
    inputs: list[str]
    params: list[str]
    outputs: list[str]
    bn_alpha: float | None
    report: dict[str, Any] | None = None
    binding: Any = None
    bound: dict[str, Any] = field(default_factory=dict)


class OrtEngine:
    """Runs ``infer.onnx`` and (lazily) ``adapt.onnx``. All arrays are numpy float32."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        self.artifact = artifact
        self.options = options or EngineOptions()
        self.providers = resolve_providers(self.options)
        self.optimize = bool(self.options.optimize) and self.providers == [CPU]
        inputs = artifact.manifest["inputs"]
        self._alpha_name: str = inputs["bn_alpha"]
        self._loss_inputs = (inputs["entropy_weight"], inputs["ce_weight"])
        self._data_inputs = {artifact.input_name, self._alpha_name, *self._loss_inputs}
        self._variants: dict[tuple[str, float | None, tuple[str, ...] | None], GraphVariant] = {}
        self._io: dict[str, dict[str, list[str]]] = {}
        self.param_inputs = [n for n in self.graph_io("infer")["inputs"] if n not in self._data_inputs]
        self.infer_outputs = self.graph_io("infer")["outputs"]

    # -- graphs and the rewrite cache --------------------------------------------------------------
    def graph_io(self, which: str) -> dict[str, list[str]]:
        """Input and output names of the exported graph ``which`` (cached; onnx is imported only on a miss)."""
        if which not in self._io:
            cache = self._cache_dir()
            path = cache / f"io-{self._source_key(which)}.json" if cache else None
            info = _read_json(path) if path else None
            if info is None:
                import onnx

                model = onnx.load(str(self.artifact.graph_path(which)), load_external_data=False)
                names = {t.name for t in model.graph.initializer}
                info = {
                    "inputs": [i.name for i in model.graph.input if i.name not in names],
                    "outputs": [o.name for o in model.graph.output],
                }
                if path:
                    _write_atomic(path, json.dumps(info).encode())
            self._io[which] = info
        return self._io[which]

    def _cache_dir(self) -> Path | None:
        """Where verified rewritten graphs are kept (keyed by the exported graph's hash, so one folder serves
        every artifact): ``extra["graph_cache"]`` (a folder, or False for none), else ``<cache_dir>/graphs``,
        else ``$EDGETTA_CACHE_DIR/graphs``, else ``~/.cache/edgetta/graphs``."""
        setting = self.options.extra.get("graph_cache", True)
        if setting is False or setting is None:
            return None
        if isinstance(setting, str | Path):
            return Path(setting)
        if self.options.cache_dir:
            return Path(self.options.cache_dir) / "graphs"
        if os.environ.get("EDGETTA_CACHE_DIR"):
            return Path(os.environ["EDGETTA_CACHE_DIR"]) / "graphs"
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetta" / "graphs"

    def _source_key(self, which: str) -> str:
        path = self.artifact.graph_path(which)
        stat = path.stat()
        parts = [which, self.artifact.manifest["graphs"][which]["sha256"], stat.st_size, stat.st_mtime_ns]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def _variant_key(self, which: str, alpha: float | None, outputs: tuple[str, ...] | None) -> str:
        parts = [self._source_key(which), alpha, outputs, edgetta.__version__, _rewrite_fingerprint()]
        return f"{which}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]}"

    def _session_options(self) -> ort.SessionOptions:
        """Rewritten graphs (``optimize``) run with: no memory pattern (it keeps a second, pre-planned copy of every
        activation: about twice the resident memory of the adapt graph), priority-based node order (ORT then
        follows the rewritten graph's order, which keeps only what the backward needs alive) and no spin-waiting
        worker threads (on a shared or small CPU spinning threads steal the cores the work needs). ``extra``
        overrides any of these; ``optimize=False`` keeps ORT's defaults, as the engine always did."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.options.intra_op_threads or int(os.environ.get("EDGETTA_THREADS", "0"))
        so.inter_op_num_threads = self.options.inter_op_threads
        so.log_severity_level = 3
        config: dict[str, str] = {}
        if self.optimize:
            so.enable_mem_pattern = False
            so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            config["session.intra_op.allow_spinning"] = "0"
        config.update({str(k): str(v) for k, v in dict(self.options.extra.get("session_config", {})).items()})
        for key, value in config.items():
            so.add_session_config_entry(key, value)
        for key, value in dict(self.options.extra.get("session_options", {})).items():
            setattr(so, key, value)
        return so

    def _session(self, which: str, source: str | bytes | None = None) -> ort.InferenceSession:
        providers = [(p, provider_options(p, self.options, self.artifact, which)) for p in self.providers]
        source = str(self.artifact.graph_path(which)) if source is None else source
        return ort.InferenceSession(source, self._session_options(), providers=providers)

    def variant(self, which: str, bn_alpha: float, outputs: Sequence[str] | None = None) -> GraphVariant:
        """The session for graph ``which`` at this ``bn_alpha`` producing ``outputs`` (all when None)."""
        all_outputs = self.graph_io(which)["outputs"]
        wanted = set(all_outputs if outputs is None else outputs)
        unknown = wanted - set(all_outputs)
        if unknown:
            raise ValueError(
                f"{which} graph has no output(s) {', '.join(sorted(unknown))}; it has: {', '.join(all_outputs)}"
            )
        pruned = tuple(sorted(wanted)) if self.optimize and wanted != set(all_outputs) else None
        alpha = float(bn_alpha) if self.optimize and float(bn_alpha) in SPECIALIZED_ALPHAS else None
        key = (which, alpha, pruned)
        if key not in self._variants:
            self._variants[key] = self._build(which, alpha, pruned) if self.optimize else self._exported(which)
        return self._variants[key]

    def _exported(self, which: str) -> GraphVariant:
        return self._variant_of(which, self._session(which), None, None)

    def _build(self, which: str, alpha: float | None, outputs: tuple[str, ...] | None) -> GraphVariant:
        """A rewritten graph: from the cache, else rewritten now, checked against the export and cached."""
        cache = self._cache_dir()
        key = self._variant_key(which, alpha, outputs) if cache else ""
        meta = _read_json(cache / f"{key}.json") if cache else None
        if cache and meta is not None and (cache / f"{key}.onnx").is_file():
            try:
                return self._variant_of(which, self._session(which, str(cache / f"{key}.onnx")), alpha, meta)
            except Exception:  # a damaged cache entry: rebuild it
                pass
        try:
            import onnx

            from edgetta.kernels.graph import optimize_graph

            rewritten, report = optimize_graph(
                onnx.load(str(self.artifact.graph_path(which))),
                self._batchnorms(),
                alpha_input=self._alpha_name,
                bn_alpha=alpha,
                outputs=outputs,
                loss_inputs=self._loss_inputs,
            )
            data = rewritten.SerializeToString()
            session = self._session(which, data)
            problem = self._verify(which, session, alpha)
        except Exception as exc:  # a rewrite must never stop the runtime: fall back to the export
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            warnings.warn(
                f"edgetta engine: the rewritten {which} graph is not used ({problem}); running the exported graph",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._exported(which)
        summary = asdict(report)
        if cache:
            _write_atomic(cache / f"{key}.onnx", data)
            _write_atomic(cache / f"{key}.json", json.dumps(summary).encode())
        return self._variant_of(which, session, alpha, summary)

    def _variant_of(
        self, which: str, session: ort.InferenceSession, alpha: float | None, report: dict[str, Any] | None
    ) -> GraphVariant:
        inputs = [i.name for i in session.get_inputs()]
        return GraphVariant(
            which=which,
            session=session,
            inputs=inputs,
            params=[n for n in inputs if n not in self._data_inputs],
            outputs=[o.name for o in session.get_outputs()],
            bn_alpha=alpha,
            report=report,
        )

    def _batchnorms(self) -> list[Any]:
        from edgetta.kernels.graph import BatchNormNames

        return [
            BatchNormNames(
                module=la.module,
                weight=la.weight,
                bias=la.bias,
                running_mean=la.running_mean,
                running_var=la.running_var,
                batch_mean=la.batch_mean,
                batch_var=la.batch_var,
                weight_grad=la.weight_grad if la.trainable else None,
                bias_grad=la.bias_grad if la.trainable else None,
            )
            for la in self.artifact.norm_layers
            if la.kind == "batchnorm"
        ]

    def _verify(self, which: str, session: ort.InferenceSession, alpha: float | None) -> str | None:
        """Compare a rewritten session with the exported graph on a fixed random batch; None when they agree.
        Each output within VERIFY_RTOL of its norm; a gradient's norm is floored at 1% of the norm of all
        gradients (a near-zero gradient is float32 round-off in both graphs, as in export's parity check)."""
        reference = self._session(which)
        rng = np.random.default_rng(0)
        shape = [VERIFY_BATCH] + [int(d) for d in self.artifact.input_shape[1:]]
        x = rng.standard_normal(shape).astype(np.float32)
        params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.artifact.params.items()}
        weights = np.full(VERIFY_BATCH, 1.0 / VERIFY_BATCH, np.float32)
        names = [o.name for o in session.get_outputs()]
        grads = set(self.artifact.grad_names.values())
        for a in [alpha] if alpha is not None else [1.0, 0.5]:
            feed = {name: params[name] for name in self.param_inputs}
            feed.update(self._extra_feed(x, a, weights, weights * 0.5))
            ref_inputs = {i.name for i in reference.get_inputs()}
            expected = dict(zip(names, reference.run(names, {k: v for k, v in feed.items() if k in ref_inputs})))
            new_inputs = {i.name for i in session.get_inputs()}
            got = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in new_inputs})))
            total = float(np.sqrt(sum(float(np.sum(expected[n] ** 2)) for n in names if n in grads)))
            for name in names:
                e, g = expected[name], got[name]
                if e.shape != g.shape:
                    return f"output {name} has shape {g.shape}, expected {e.shape}"
                scale = max(float(np.linalg.norm(e)), 0.01 * total if name in grads else 0.0, 1e-6)
                if not np.all(np.isfinite(g)) or float(np.linalg.norm(g - e)) > VERIFY_RTOL * scale:
                    return f"output {name} differs from the exported graph at bn_alpha={a}"
        return None

    def _extra_feed(
        self, x: np.ndarray, bn_alpha: float, entropy_weight: np.ndarray | None, ce_weight: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        feed = {
            self.artifact.input_name: np.ascontiguousarray(x, dtype=np.float32),
            self._alpha_name: np.asarray(bn_alpha, dtype=np.float32),
        }
        if entropy_weight is not None:
            feed[self._loss_inputs[0]] = np.ascontiguousarray(entropy_weight, dtype=np.float32)
        if ce_weight is not None:
            feed[self._loss_inputs[1]] = np.ascontiguousarray(ce_weight, dtype=np.float32)
        return feed

    @property
    def infer_session(self) -> ort.InferenceSession:
        """The general infer session (``bn_alpha`` an input, every output)."""
        return self.variant("infer", 0.5).session

    @property
    def adapt_session(self) -> ort.InferenceSession:
        """The general adapt session (``bn_alpha`` an input, every output)."""
        return self.variant("adapt", 0.5).session

    @property
    def adapt_outputs(self) -> list[str]:
        return self.graph_io("adapt")["outputs"]

    # -- calls -------------------------------------------------------------------------------------
    def _run(
        self,
        variant: GraphVariant,
        names: list[str],
        x: np.ndarray,
        params: dict[str, np.ndarray],
        bn_alpha: float,
        entropy_weight: np.ndarray | None = None,
        ce_weight: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """One call through the variant's IOBinding. Parameter arrays are bound without a copy (ORT reads their
        memory at run time, so arrays changed in place are seen) and rebound only when a call passes a different
        array object; arrays that need a dtype/layout conversion are converted and rebound on every call."""
        if variant.binding is None:
            variant.binding = variant.session.io_binding()
        binding, bound = variant.binding, variant.bound
        for name in variant.params:
            value = params[name]
            if bound.get(name) is value:
                continue
            converted = _f32(value)
            binding.bind_cpu_input(name, converted)
            if converted is value:
                bound[name] = value
            else:
                bound.pop(name, None)
                bound[f"#{name}"] = converted  # keep the converted copy alive while it is bound
        for name, value in self._extra_feed(x, bn_alpha, entropy_weight, ce_weight).items():
            if name in variant.inputs:
                binding.bind_cpu_input(name, value)
                bound[f"#{name}"] = value
        # Outputs stay bound (ORT allocates them on the first run and refills them later; results are copied
        # out) until a call asks for other outputs or another batch size.
        key = (tuple(names), tuple(np.shape(x)))
        if bound.get("#outputs") != key:
            binding.clear_binding_outputs()
            for name in names:
                binding.bind_output(name)
            bound["#outputs"] = key
        variant.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def infer(
        self, x: np.ndarray, params: dict[str, np.ndarray], bn_alpha: float, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else self.infer_outputs
        variant = self.variant("infer", bn_alpha, names)
        return self._run(variant, names, x, params, bn_alpha)

    def adapt(
        self,
        x: np.ndarray,
        params: dict[str, np.ndarray],
        bn_alpha: float,
        entropy_weight: np.ndarray,
        ce_weight: np.ndarray,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One call of the adapt graph. ``outputs``: only these (all by default; fewer is faster)."""
        names = list(outputs) if outputs else self.adapt_outputs
        variant = self.variant("adapt", bn_alpha, names)
        return self._run(variant, names, x, params, bn_alpha, entropy_weight, ce_weight)


def _f32(array: np.ndarray) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written (read-only artifact) is simply not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


@functools.cache
def _rewrite_fingerprint() -> str:
    """Hash of the rewrite code and the onnx version: a cached graph is reused only if both are unchanged."""
    spec = importlib.util.find_spec("edgetta.kernels.graph")
    source = Path(spec.origin).read_bytes() if spec and spec.origin else b""
    try:
        onnx_version = importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:
        onnx_version = "?"
    return hashlib.sha256(source + onnx_version.encode()).hexdigest()[:16]
