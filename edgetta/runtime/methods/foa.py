"""FOA-style forward-only adaptation (Niu et al., "Test-Time Model Adaptation with Only Forward Passes",
ICML 2024), on ``infer.onnx`` alone: no adapt graph and no gradient, so it runs on fixed and quantized
engines. Prompt-free variant: the searched vector z holds a per-layer scale and shift of the norm
layers' affine parameters (the released code searches ViT input prompts).

Per batch (released ``tta_library/foa.py``):

- CMA-ES (Hansen 2016; the ``cma`` package) proposes a population z_1..z_K (K = 4 + 3 ln d unless
  ``popsize`` is set), evaluated together with the previous batch's best z; candidate z sets, for each
  trainable norm layer l, gamma_l = gamma_l^S (1 + z_l) and beta_l = beta_l^S + z_{L+l} mean|gamma_l^S|
  (a shift in units of the layer's output spread), d = 2L;
- fitness (Eq. 5): sum_i H_i + lambda (B / 64) sum_l (||sigma_l - sigma_l^S||^2 + ||mu_l - mu_l^S||^2),
  lambda = 0.4, over the statistics this engine exposes: every BatchNorm layer's batch mean and standard
  deviation against its running statistics (``layer_stats``), and the classifier input (``features``)
  against source feature statistics (``source_stats``); CMA-ES is told every candidate's fitness (Eq. 6);
- predictions: the lowest-fitness candidate's, shifted at the output (Eq. 7-9): logits = head(f + mu^S - h)
  with h an EMA (0.9) of the candidates' mean test features (the shift uses h before this batch). The
  head is recovered from (features, logits) pairs by least squares (``edgetta.kernels.linear_head``) and
  the shift is skipped, with an event, when the head is not linear.

Source feature statistics come from ``source_stats``: an NPZ holding ``mean`` and ``std`` of the
features, or calibration inputs ``x`` that the method runs through ``infer.onnx`` at the source
parameters when it starts (std with N - 1, as ``torch.std_mean``).

Cost per batch: K + 1 infer calls (13 for the 9-layer test ResNet, d = 18), no backward.
Differences from the released code: CMA-ES draws from its own seeded generator (the released code
seeds numpy's global one, which streams in one process would share); the searched parameters (norm
affine instead of prompts); sigma0 = 0.1 instead of 1 (z is a relative change here); layer statistics
are BatchNorm inputs (for a BN network) instead of each transformer block's CLS token; BN variances
are the graph's biased batch variances. A checkpoint keeps the best z, h and the head; CMA-ES restarts
around the best z after a restore (its state is not serialised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetta.contract import FEATURES, LOGITS
from edgetta.errors import ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.kernels.linear_head import LinearHeadFit
from edgetta.runtime.methods.base import ForwardOnlyMethod, StepOutput
from edgetta.safety.base import Event

CMA_MISSING = "method foa needs the cma package (CMA-ES): pip install 'edgetta[foa]'"


def _cma():
    try:
        import cma
    except ImportError as exc:
        raise ConfigError(CMA_MISSING) from exc
    return cma


def feature_stats(engine, params: dict[str, np.ndarray], x: np.ndarray, bn_alpha: float, batch_size: int = 64):
    """Mean and std (N - 1) of ``infer.onnx``'s features over calibration inputs ``x``."""
    feats = [
        engine.infer(x[i : i + batch_size], params, bn_alpha, outputs=[FEATURES])[FEATURES]
        for i in range(0, len(x), batch_size)
    ]
    f = np.concatenate(feats).astype(np.float64).reshape(len(x), -1)
    return f.mean(0), f.std(0, ddof=1)


class Foa(ForwardOnlyMethod):
    name = "foa"

    def __init__(
        self,
        fitness_lambda: float = 0.4,
        sigma0: float = 0.1,
        popsize: int = 0,
        seed: int = 2020,
        layer_stats: bool = True,
        source_stats: str = "",
        shift: bool = True,
        shift_momentum: float = 0.9,
        bn_alpha: float = 0.0,
    ) -> None:
        self.cma = _cma()
        if fitness_lambda < 0 or sigma0 <= 0:
            raise ConfigError(
                f"method_args: fitness_lambda must be >= 0 and sigma0 > 0, got {fitness_lambda}, {sigma0}"
            )
        if isinstance(popsize, bool) or int(popsize) != popsize or popsize < 0:
            raise ConfigError(f"method_args.popsize must be an integer >= 0 (0: 4 + 3 ln d), got {popsize}")
        if not 0.0 <= shift_momentum < 1.0 or not 0.0 <= bn_alpha <= 1.0:
            raise ConfigError("method_args.shift_momentum must lie in [0, 1) and bn_alpha in [0, 1]")
        self.fitness_lambda, self.sigma0, self.popsize, self.seed = (
            float(fitness_lambda),
            float(sigma0),
            int(popsize),
            int(seed),
        )
        self.layer_stats, self.source_stats, self.use_shift = bool(layer_stats), str(source_stats), bool(shift)
        self.shift_momentum, self.bn_alpha = float(shift_momentum), float(bn_alpha)

    # -- setup -----------------------------------------------------------------------------------
    def bind(self, engine, state, rails, env) -> None:
        super().bind(engine, state, rails, env)
        artifact = engine.artifact
        self.layers = [(la.weight, la.bias) for la in artifact.norm_layers if la.trainable and la.weight and la.bias]
        if not self.layers:
            raise ConfigError("method foa needs norm layers with affine parameters (weight and bias) to search over")
        self.has_features = artifact.output_name(FEATURES) is not None
        self.bn_stats = state.running_stats if self.layer_stats else []
        self.feature_source = self._load_source_stats() if self.source_stats else None
        if not self.bn_stats and self.feature_source is None:
            raise ConfigError(
                "method foa needs source statistics: BatchNorm layers (layer_stats: true) or "
                "method_args.source_stats (an NPZ with the features' mean and std, or calibration inputs x)"
            )
        self.spread = {w: float(np.mean(np.abs(state.source[w]))) for w, _ in self.layers}
        self.head = LinearHeadFit()
        self.notes: list[str] = []
        self.hist: np.ndarray | None = None
        self.best = np.zeros(2 * len(self.layers))
        self._start_search()

    def _load_source_stats(self) -> tuple[np.ndarray, np.ndarray]:
        path = Path(self.source_stats)
        if not self.has_features:
            raise ConfigError(
                "method_args.source_stats needs the artifact's features output; re-export with --classifier NAME"
            )
        if not path.is_file():
            raise ConfigError(f"method_args.source_stats: {path} does not exist (an NPZ with mean and std, or x)")
        with np.load(path, allow_pickle=False) as data:
            if "mean" in data and "std" in data:
                return np.asarray(data["mean"], np.float64).ravel(), np.asarray(data["std"], np.float64).ravel()
            if "x" in data:
                x = np.asarray(data["x"], np.float32)
                return feature_stats(self.engine, self.state.source, x, self.bn_alpha)
        raise ConfigError(f"method_args.source_stats: {path} holds neither mean and std nor calibration inputs x")

    def _start_search(self) -> None:
        rng = np.random.default_rng(self.seed)  # its own generator: cma's default is numpy's global one
        opts = {"randn": lambda *shape: rng.standard_normal(shape), "seed": float("nan"), "verbose": -9}
        opts["maxiter"] = float("inf")
        if self.popsize:
            opts["popsize"] = self.popsize
        self.es = self.cma.CMAEvolutionStrategy(list(self.best), self.sigma0, inopts=opts)

    def needs_batch(self, artifact) -> bool:
        return True  # the fitness compares batch statistics

    def step(self, x: np.ndarray, batch_index: int, update: bool = True) -> StepOutput:
        # No rail can act on a search that never changes the model, so the base step passes update=False
        # to ``forward``; the search itself still runs on every call that may update.
        self._search, self._batch_index = update, batch_index
        try:
            return super().step(x, batch_index, update)
        finally:
            self._search = False

    # -- the search ------------------------------------------------------------------------------
    def candidate_params(self, z: np.ndarray) -> dict[str, np.ndarray]:
        params = dict(self.state.params)
        n = len(self.layers)
        for i, (w, b) in enumerate(self.layers):
            params[w] = (self.state.source[w] * (1.0 + z[i])).astype(np.float32)
            params[b] = (self.state.source[b] + z[n + i] * self.spread[w]).astype(np.float32)
        return params

    def fitness(self, outputs: dict[str, np.ndarray], n: int) -> float:
        """Eq. 5: summed entropy + lambda * (B / 64) * squared distance of the statistics to the source."""
        disc = 0.0
        for rm, rv, bm, bv in self.bn_stats:
            mu, sd = outputs[bm].astype(np.float64), np.sqrt(np.maximum(outputs[bv].astype(np.float64), 0.0))
            disc += float(
                np.sum((mu - self.state.source[rm]) ** 2) + np.sum((sd - np.sqrt(self.state.source[rv])) ** 2)
            )
        if self.feature_source is not None:
            f = outputs[FEATURES].astype(np.float64).reshape(n, -1)
            sd = f.std(0, ddof=1) if n > 1 else np.zeros(f.shape[1])
            disc += float(
                np.sum((sd - self.feature_source[1]) ** 2) + np.sum((f.mean(0) - self.feature_source[0]) ** 2)
            )
        return float(np.sum(entropy_of(outputs[LOGITS]), dtype=np.float64)) + self.fitness_lambda * disc * n / 64.0

    def forward(self, x: np.ndarray, update: bool) -> tuple[StepOutput, dict[str, np.ndarray]]:
        update, n = getattr(self, "_search", update), len(x)
        shift = None
        if self.use_shift and self.feature_source is not None and self.hist is not None:
            shift = self.feature_source[0] - self.hist
        if not update:
            outputs = self.engine.infer(x, self.candidate_params(self.best), self.bn_alpha)
            return self._output(outputs, shift, 1), outputs
        candidates = [np.asarray(z, np.float64) for z in self.es.ask()] + [self.best]
        scores, best_outputs, means = [], None, []
        for z in candidates:
            outputs = self.engine.infer(x, self.candidate_params(z), self.bn_alpha)
            score = self.fitness(outputs, n)
            if best_outputs is None or score < min(scores):
                best_outputs = outputs
            scores.append(score)
            if self.has_features:
                feats = outputs[FEATURES].reshape(n, -1)
                means.append(feats.astype(np.float64).mean(0))
                self.head.add(feats, outputs[LOGITS])
        self.es.tell(candidates, scores)
        self.best = candidates[int(np.argmin(scores))].copy()
        out = self._output(best_outputs, shift, len(candidates))
        if means:
            mean = np.mean(means, axis=0)
            m = self.shift_momentum
            self.hist = mean if self.hist is None else m * self.hist + (1.0 - m) * mean
        return out, best_outputs

    def _output(self, outputs: dict[str, np.ndarray], shift: np.ndarray | None, passes: int) -> StepOutput:
        logits = outputs[LOGITS]
        events: list[Event] = []
        if shift is not None and self.head.ready:
            logits = self.head.shift(logits, shift)
        elif shift is not None and self.head.failed and "head" not in self.notes:
            self.notes.append("head")
            events.append(
                Event(getattr(self, "_batch_index", 0), self.name, "note", f"no activation shift: {self.head.failed}")
            )
        return StepOutput(logits, entropy_of(logits), forward_passes=passes, events=events)

    # -- state -----------------------------------------------------------------------------------
    def reset_method_state(self) -> None:
        self.best = np.zeros(2 * len(self.layers))
        self.hist = None
        self._start_search()

    def method_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"foa/best": self.best.copy()}
        if self.hist is not None:
            tensors["foa/hist"] = self.hist.copy()
        tensors.update({f"foa/head_{k}": v for k, v in self.head.state().items()})
        return tensors, {}

    def load_method_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if "foa/best" in tensors:
            self.best = np.asarray(tensors["foa/best"], np.float64)
        self.hist = np.asarray(tensors["foa/hist"], np.float64) if "foa/hist" in tensors else None
        self.head.load_state({k[len("foa/head_") :]: v for k, v in tensors.items() if k.startswith("foa/head_")})
        self._start_search()
