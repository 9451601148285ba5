"""``OrtEngine``: the Engine protocol on ONNX Runtime.

Parameters are graph inputs, so one session serves every method and every parameter state. CUDA and
TensorRT providers are configured when onnxruntime offers them (never run on a GPU here: see README
"Known limits").

On the CPU provider the graphs are rewritten before ORT sees them (edgetta.engines.ort.rewrite, see
docs/speed.md): fused BatchNormalization forward and a closed-form BN backward instead of the traced plain
ops, cheap ReLU gradients, ``bn_alpha`` fixed when it is 0 or 1 (one session per value, built on first use)
and graph outputs pruned to what a call asks for. Each rewritten graph is checked against the exported
graph on a small batch when it is built (edgetta.engines.ort.verify) and kept in the graph cache
(edgetta.engines.ort.graph_cache); on any mismatch the engine runs the exported graph, logs one line on the
``edgetta.engine`` logger and records the reason in ``fallbacks``.

Infer calls whose parameters stay the same run a folded session (edgetta.engines.ort.fold): the graph with
the parameter values as constants, so ORT folds every BatchNormalization into its convolution as in a plain
inference export; any change of the values (in place, new arrays, a bundle) goes back to the general session
until the new values repeat. ``extra={"fold": False}`` turns folding off; ``EngineOptions(optimize=False)``
turns all of this off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import onnxruntime as ort

from edgetta.contract import Artifact
from edgetta.engines.feed import DataInputs
from edgetta.engines.options import EngineOptions
from edgetta.engines.ort.binding import GraphVariant
from edgetta.engines.ort.fold import FoldCache
from edgetta.engines.ort.graph_cache import GraphCache, default_folder
from edgetta.engines.ort.providers import CPU, provider_options, resolve_providers, session_options

SPECIALIZED_ALPHAS = (0.0, 1.0)
# Where ORT finds the external weights of a graph built from bytes (rewritten graphs reference weights.bin).
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
log = logging.getLogger("edgetta.engine")


class OrtEngine:
    """Runs ``infer.onnx`` and (lazily) ``adapt.onnx``. All arrays are numpy float32.

    ``fallbacks``: one message per rewritten graph that was not used (the exported graph ran instead)."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        self.artifact = artifact
        self.options = options or EngineOptions()
        self.providers = resolve_providers(self.options)
        self.optimize = bool(self.options.optimize) and self.providers == [CPU]
        self.fallbacks: list[str] = []
        self.data_inputs = DataInputs.of(artifact)
        self.cache = GraphCache(default_folder(self.options))
        self._variants: dict[tuple[str, float | None, tuple[str, ...] | None], GraphVariant] = {}
        self._io: dict[str, dict[str, list[str]]] = {}
        self.param_inputs = [n for n in self.graph_io("infer")["inputs"] if n not in self.data_inputs.names]
        self.infer_outputs = self.graph_io("infer")["outputs"]
        self.folding = self.optimize and bool(self.options.extra.get("fold", True))
        self.folds = FoldCache(lambda v: v.source() if v.source else None, self._fold_session, self.data_inputs.names)

    # -- graphs ------------------------------------------------------------------------------------
    def graph_io(self, which: str) -> dict[str, list[str]]:
        """Input and output names of the exported graph ``which`` (cached; onnx is imported only on a miss)."""
        if which not in self._io:
            key = self.cache.source_key(self.artifact, which)
            info = self.cache.load_io(key)
            if info is None:
                import onnx

                model = onnx.load(str(self.artifact.graph_path(which)), load_external_data=False)
                constants = {t.name for t in model.graph.initializer}
                info = {
                    "inputs": [i.name for i in model.graph.input if i.name not in constants],
                    "outputs": [o.name for o in model.graph.output],
                }
                self.cache.store_io(key, info)
            self._io[which] = info
        return self._io[which]

    def output_names(self, which: str) -> list[str]:
        """The outputs graph ``which`` ("infer" or "adapt") can give."""
        return list(self.graph_io(which)["outputs"])

    @property
    def adapt_outputs(self) -> list[str]:
        return self.graph_io("adapt")["outputs"]

    @property
    def infer_session(self) -> ort.InferenceSession:
        """The general infer session (``bn_alpha`` an input, every output)."""
        return self.variant("infer", 0.5).session

    @property
    def adapt_session(self) -> ort.InferenceSession:
        """The general adapt session (``bn_alpha`` an input, every output)."""
        return self.variant("adapt", 0.5).session

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

    # -- sessions ----------------------------------------------------------------------------------
    def _session(self, which: str, source: str | bytes | None = None) -> ort.InferenceSession:
        providers = [(p, provider_options(p, self.options, self.artifact, which)) for p in self.providers]
        options = session_options(self.options, self.optimize)
        if source is None:
            source = str(self.artifact.graph_path(which))
        elif not isinstance(source, str):  # a rewritten graph whose weights stay in the artifact's weights file
            options.add_session_config_entry(EXTERNAL_FOLDER, str(self.artifact.graph_path(which).parent))
        return ort.InferenceSession(source, options, providers=providers)

    def _fold_session(self, data: bytes) -> ort.InferenceSession:
        return self._session("infer", data)

    def _variant_of(
        self,
        which: str,
        session: ort.InferenceSession,
        alpha: float | None,
        report: dict[str, Any] | None,
        source: Callable[[], str | bytes | None] | None = None,
    ) -> GraphVariant:
        return GraphVariant.of(which, session, self.data_inputs.names, alpha, report, source)

    def _exported(self, which: str) -> GraphVariant:
        path = str(self.artifact.graph_path(which))
        return self._variant_of(which, self._session(which), None, None, lambda: path)

    def _rewritten_source(
        self, key: str, which: str, alpha: float | None, outputs: tuple[str, ...] | None
    ) -> Callable[[], str | bytes | None]:
        """The rewritten graph's bytes on demand (not kept in memory next to the session): read back from
        the graph cache, else rewritten again."""

        def source() -> bytes:
            cached = self.cache.load(key) if key else None
            return cached[0] if cached is not None else self._rewrite(which, alpha, outputs)[0]

        return source

    def _build(self, which: str, alpha: float | None, outputs: tuple[str, ...] | None) -> GraphVariant:
        """A rewritten graph: from the cache, else rewritten now, checked against the export and cached."""
        key = self.cache.variant_key(self.artifact, which, alpha, outputs) if self.cache.folder else ""
        cached = self.cache.load(key) if key else None
        if cached is not None:
            data, report = cached
            try:
                source = self._rewritten_source(key, which, alpha, outputs)
                return self._variant_of(which, self._session(which, data), alpha, report, source)
            except Exception:  # noqa: BLE001 - an entry ORT cannot load: rebuild it
                pass
        problem = self.cache.rejection(key) if key else None  # rejected before: not rewritten and verified again
        if problem is None:
            try:
                data, report, session = self._rewrite(which, alpha, outputs)
                problem = self._verify(which, session, alpha)
            except Exception as exc:  # noqa: BLE001 - a rewrite must never stop the runtime: run the export
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None and key:
                self.cache.reject(key, problem)
        if problem is not None:
            message = f"rewritten {which} graph not used ({problem}); running the exported graph"
            self.fallbacks.append(message)
            log.info("edgetta engine: %s", message)
            return self._exported(which)
        if key:
            self.cache.store(key, data, report)
        return self._variant_of(which, session, alpha, report, self._rewritten_source(key, which, alpha, outputs))

    def _rewrite(
        self, which: str, alpha: float | None, outputs: tuple[str, ...] | None
    ) -> tuple[bytes, dict[str, Any], ort.InferenceSession]:
        import onnx

        from edgetta.engines.ort import rewrite

        model, report = rewrite.optimize_graph(
            onnx.load(str(self.artifact.graph_path(which)), load_external_data=False),
            self.artifact.norm_layers,
            alpha_input=self.data_inputs.bn_alpha,
            bn_alpha=alpha,
            outputs=outputs,
            loss_inputs=self.data_inputs.loss_inputs,
        )
        data = model.SerializeToString()
        return data, asdict(report), self._session(which, data)

    def _verify(self, which: str, session: ort.InferenceSession, alpha: float | None) -> str | None:
        from edgetta.engines.ort.verify import compare_with_export

        reference = self._session(which)
        return compare_with_export(reference, session, self.artifact, self.data_inputs, self.param_inputs, alpha)

    # -- calls -------------------------------------------------------------------------------------
    def infer(
        self,
        x: np.ndarray,
        params: Mapping[str, np.ndarray],
        bn_alpha: float,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One call of the infer graph. ``outputs``: only these (all by default; fewer is faster)."""
        names = list(outputs) if outputs else self.infer_outputs
        variant = self.variant("infer", bn_alpha, names)
        feed = self.data_inputs.feed(x, bn_alpha)
        if self.folding:
            return self.folds.run(variant, names, params, feed)
        return variant.run(names, params, feed)

    def adapt(
        self,
        x: np.ndarray,
        params: Mapping[str, np.ndarray],
        bn_alpha: float,
        entropy_weight: np.ndarray,
        ce_weight: np.ndarray,
        outputs: Sequence[str] | None = None,
        soft_target: np.ndarray | None = None,
        soft_weight: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """One call of the adapt graph. ``outputs``: only these (all by default; fewer is faster)."""
        names = list(outputs) if outputs else self.adapt_outputs
        variant = self.variant("adapt", bn_alpha, names)
        feed = self.data_inputs.feed(x, bn_alpha, entropy_weight, ce_weight, soft_target, soft_weight)
        return variant.run(names, params, feed)
