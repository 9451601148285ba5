"""The one step every adaptation method runs, with its rail phases, resets and state.

``Method.step`` for every method, forward-only ones included:

0. when a rail chooses statistics (the method offers ``Target.STATISTICS``: it normalises with test-batch
   statistics): rails ``choose_statistics`` with a :class:`StatisticsContext`; a rail that replaces the
   batch's forward (a forward at other BN statistics) fixes the predictions and the batch does not update;
   otherwise the forward at the method's own statistics it ran is reused by ``forward``;
1. ``forward``: the pass whose logits are the predictions (Tent semantics: before the update);
2. when the method adapts and this call may update: a :class:`StepContext`, ``select`` (per-sample
   weights of the loss), rails ``before_update``; unless the batch is skipped: ``gradients`` (gradient
   methods, then rails ``on_gradients``) and ``propose`` (new values of the adapted tensors);
   rails ``after_update`` (skipped batches too, with no proposal, so drift signals can still ask for a
   reset); commit unless rejected; the requested reset; rails ``after_commit``.

A method declares what rails may act on (``offers``), which tensors it adapts (``adapted_names``) and
whether its predictions need a batch (``needs_batch``: the Adapter then feeds small calls through a
sliding window). Methods see the engine only through the :class:`~edgetta.engines.Engine` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetta.contract import ENTROPY, LOGITS, LOSS
from edgetta.kernels import entropy as entropy_of
from edgetta.kernels import softmax
from edgetta.runtime.optim import Optimizer, make_optimizer
from edgetta.runtime.state import AdaptState
from edgetta.safety.base import RESET_SOURCE, Event, RailEnv, StatisticsContext, StepContext, Target
from edgetta.safety.pipeline import RailPipeline

if TYPE_CHECKING:
    from edgetta.contract import Artifact
    from edgetta.engines import Engine

ALL_TARGETS = frozenset(Target)


@dataclass
class StepOutput:
    logits: np.ndarray
    entropy: np.ndarray
    updated: bool = False
    forward_passes: int = 0
    backward_passes: int = 0
    events: list[Event] = field(default_factory=list)


class Method:
    """Base class: the step pipeline. Subclasses override ``forward`` and, if they adapt, ``select``,
    ``gradients`` and ``propose``."""

    name = "method"
    bn_alpha = 0.0  # blend of batch and running BN statistics the method normalises with
    # True: the optimiser steps even when no sample keeps a weight (SAR's released code: momentum alone)
    steps_without_samples = False

    def bind(self, engine: Engine, state: AdaptState, rails: RailPipeline, env: RailEnv) -> None:
        self.engine, self.state, self.rails, self.env = engine, state, rails, env

    # -- declarations ----------------------------------------------------------------------------
    def offers(self) -> frozenset[Target]:
        """What rails may act on with this method (nothing: the method never changes the model)."""
        return frozenset()

    def adapted_names(self) -> list[str]:
        """Graph-input names of the tensors this method's updates change (after ``bind``)."""
        return []

    def needs_batch(self, artifact: Artifact) -> bool:
        """True when a prediction depends on the other samples of its batch (batch statistics, LAME)."""
        return False

    @property
    def adapts(self) -> bool:
        """True when the method changes the model (choosing statistics alone changes nothing)."""
        return bool(self.offers() - {Target.STATISTICS})

    # -- one step ----------------------------------------------------------------------------------
    def step(self, x: np.ndarray, batch_index: int, update: bool = True) -> StepOutput:
        self._reuse: dict[str, np.ndarray] | None = None
        sctx = self.choose_statistics(x, batch_index)
        held = sctx is not None and sctx.replaced is not None
        if held:
            outputs = sctx.replaced
            out = StepOutput(outputs[LOGITS], entropy_of(outputs[LOGITS]))
        else:
            out, outputs = self.forward(x, update and self.adapts)
        if sctx is not None:
            out.forward_passes += sctx.forward_passes - (1 if self._reuse_used else 0)
            out.events.extend(sctx.events)
        if not (update and self.adapts):
            return out
        ctx = self.context(out, batch_index)
        self.select(ctx)
        ctx.skip_update = ctx.skip_update or held  # a batch whose statistics a rail replaced never updates
        self.rails.before_update(ctx)
        if not ctx.skip_update and (self.steps_without_samples or np.any(ctx.weights > 0)):
            self.gradients(x, ctx, out, outputs)
            if ctx.grads is not None:
                self.rails.on_gradients(ctx)
            if not ctx.skip_update:
                ctx.proposed = self.propose(ctx, outputs)
        else:
            ctx.skip_update = True
        self.rails.after_update(ctx)
        if ctx.proposed is not None and not ctx.skip_update and not ctx.reject_update:
            self.state.set_values(ctx.proposed)
            self.state.update_count += 1
            out.updated = True
        if ctx.reset:
            self.reset(ctx.reset, ctx.reset_params)
        self.rails.after_commit(ctx)
        out.events.extend(ctx.events)
        self.after_step(x, out, outputs)
        return out

    def choose_statistics(self, x: np.ndarray, batch_index: int) -> _Statistics | None:
        """Phase 0: rails choose the batch's BN statistics (None when no rail does)."""
        self._reuse_used = False
        if not self.rails.chooses_statistics or not self.bn_alpha:
            return None
        sctx = _Statistics(batch_index, self.bn_alpha, self.state.params, self._forward_at(x))
        self.rails.choose_statistics(sctx)
        self._reuse = sctx.cached(self.bn_alpha, None)
        return sctx

    def _forward_at(self, x: np.ndarray):
        params = self.state.params

        def run(bn_alpha: float, running: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
            return self.engine.infer(x, {**params, **running} if running else params, bn_alpha)

        return run

    def own_infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``infer.onnx`` at the method's statistics, reusing the statistics phase's forward when it ran one."""
        if self._reuse is not None:
            outputs, self._reuse, self._reuse_used = self._reuse, None, True
            return outputs
        return self.engine.infer(x, self.state.params, self.bn_alpha)

    def forward(self, x: np.ndarray, update: bool) -> tuple[StepOutput, dict[str, np.ndarray]]:
        raise NotImplementedError

    def select(self, ctx: StepContext) -> None:
        """Set ``ctx.weights`` (the loss weight of each sample). Default: the batch mean (uniform)."""

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        """Set ``ctx.grads`` and ``ctx.loss`` (gradient methods)."""

    def propose(self, ctx: StepContext, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """New values of the adapted tensors, or None for no update."""
        return None

    def after_step(self, x: np.ndarray, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        """Hook after the update (e.g. predict again with the new parameters)."""

    def context(self, out: StepOutput, batch_index: int) -> StepContext:
        n = out.logits.shape[0]
        names = self.adapted_names()
        return StepContext(
            batch_index=batch_index,
            update_count=self.state.update_count,
            num_classes=out.logits.shape[1],
            logits=out.logits,
            probs=softmax(out.logits),
            entropy=out.entropy,
            weights=np.full(n, 1.0 / n, np.float32),
            params=self.state.values(names),
            source=self.state.source_values(names),
        )

    # -- reset and state -------------------------------------------------------------------------
    def reset(self, target: str = RESET_SOURCE, params: dict[str, np.ndarray] | None = None) -> None:
        """Reset to the source parameters and statistics, or set the adapted tensors to ``params``."""
        if target == RESET_SOURCE or params is None:
            self.state.reset_to_source()
        else:
            self.state.set_values({k: v.copy() for k, v in params.items()})
            self.state.reset_count += 1
        self.reset_method_state()
        self.rails.on_reset(target)

    def reset_method_state(self) -> None:
        """Clear method-specific history on reset (optimiser moments)."""

    def method_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def load_method_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass


class _Statistics(StatisticsContext):
    """The statistics context with each distinct forward run once and counted."""

    def __init__(self, batch_index: int, bn_alpha: float, params: dict[str, np.ndarray], run) -> None:
        self._runs: dict[tuple[float, int], tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]] = {}
        self._run = run
        super().__init__(batch_index, bn_alpha, params, self._forward)

    def _forward(self, bn_alpha: float, running: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        hit = self.cached(bn_alpha, running)
        if hit is None:
            hit = self._run(bn_alpha, running)
            self._runs[(float(bn_alpha), id(running))] = (running, hit)
        return hit

    def cached(self, bn_alpha: float, running: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
        entry = self._runs.get((float(bn_alpha), id(running)))
        return entry[1] if entry is not None else None

    @property
    def forward_passes(self) -> int:
        return len(self._runs)


class ForwardOnlyMethod(Method):
    """Methods that only run ``infer.onnx``: they work on any engine, fixed TensorRT engines included."""

    bn_alpha = 0.0

    def infer(self, x: np.ndarray) -> tuple[StepOutput, dict[str, np.ndarray]]:
        outputs = self.own_infer(x)
        logits = outputs[LOGITS]
        return StepOutput(logits, entropy_of(logits), forward_passes=1), outputs

    def forward(self, x: np.ndarray, update: bool) -> tuple[StepOutput, dict[str, np.ndarray]]:
        return self.infer(x)

    def needs_batch(self, artifact: Artifact) -> bool:
        return self.bn_alpha > 0 and any(layer.kind == "batchnorm" for layer in artifact.norm_layers)


class GradientMethod(Method):
    """Single-step entropy minimisation on the norm affine parameters through ``adapt.onnx``.

    The adapt graph returns the gradient of sum_i w_i H_i (plus a pseudo-label cross-entropy term, unused
    here) for per-sample weights w given as an input. When nothing decides the weights from the entropies
    (Tent without gates) one adapt call gives predictions and gradients with uniform weights; otherwise
    a forward (``infer``) comes first and the adapt graph runs only if some sample keeps a weight. Should a
    rail change the weights after a single call anyway, the adapt graph runs again with the new weights:
    weights are never ignored. ``bn_momentum`` > 0 also refreshes the BN running statistics once per update.
    ``lr_batch`` > 0 scales the learning rate linearly with the batch: lr * n / lr_batch for a batch of n.
    """

    preview = False  # True when ``select`` needs the entropies before the adapt call

    def __init__(
        self,
        lr: float = 0.00025,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        nesterov: bool = False,
        bn_alpha: float = 1.0,
        bn_momentum: float = 0.0,
        reforward: bool = False,
        lr_batch: int = 0,
    ) -> None:
        self.reforward = bool(reforward)  # predict after the update (one more forward) instead of before
        if isinstance(lr_batch, bool) or int(lr_batch) != lr_batch or lr_batch < 0:
            raise ValueError(f"lr_batch must be an integer >= 0 (0: lr as given), got {lr_batch}")
        # lr_batch > 0: ``lr`` is the rate at that batch size and each step uses lr * n / lr_batch for a batch
        # of n (the linear scaling rule the papers write as (base / 64) * B)
        self.base_lr, self.lr_batch = float(lr), int(lr_batch)
        kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        if optimizer.lower() == "sgd":
            kwargs.update(momentum=momentum, nesterov=nesterov)
        elif optimizer.lower() == "adam":
            kwargs.update(betas=tuple(betas))
        self.optimizer: Optimizer = make_optimizer(optimizer, **kwargs)
        if not 0.0 <= bn_alpha <= 1.0:
            raise ValueError(f"bn_alpha must lie in [0, 1], got {bn_alpha}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must lie in [0, 1], got {bn_momentum}")
        self.bn_alpha = float(bn_alpha)
        self.bn_momentum = float(bn_momentum)
        self._uniform: np.ndarray | None = None

    def bind(self, engine: Engine, state: AdaptState, rails: RailPipeline, env: RailEnv) -> None:
        super().bind(engine, state, rails, env)
        self.needs_preview = self.preview or rails.gates_before_update

    def offers(self) -> frozenset[Target]:
        return ALL_TARGETS if self.bn_alpha > 0 else ALL_TARGETS - {Target.STATISTICS}

    def adapted_names(self) -> list[str]:
        return list(self.state.trainable)

    def needs_batch(self, artifact: Artifact) -> bool:
        return self.bn_alpha > 0 and any(layer.kind == "batchnorm" for layer in artifact.norm_layers)

    def forward(self, x: np.ndarray, update: bool) -> tuple[StepOutput, dict[str, np.ndarray]]:
        self._uniform = None
        if not update or self.needs_preview:
            outputs = self.own_infer(x)
            logits = outputs[LOGITS]
            return StepOutput(logits, entropy_of(logits), forward_passes=1), outputs
        n = x.shape[0]
        self._uniform = np.full(n, 1.0 / n, np.float32)
        outputs = self._run_adapt(x, self.state.params, self._uniform)
        return StepOutput(outputs[LOGITS], outputs[ENTROPY], forward_passes=1, backward_passes=1), outputs

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        weights = ctx.weights.astype(np.float32)
        result = outputs
        if self._uniform is None or not np.array_equal(weights, self._uniform):
            result = self._run_adapt(x, self.state.params, weights)
            out.backward_passes += 1
        ctx.grads, ctx.loss = self._grads(result), float(result[LOSS])

    def propose(self, ctx: StepContext, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        if self.bn_momentum > 0:
            self.state.refresh_running_stats(outputs, self.bn_momentum)
        proposed = {k: v.copy() for k, v in ctx.params.items()}
        if self.lr_batch:
            self.optimizer.lr = self.base_lr * len(ctx.weights) / self.lr_batch
        self.optimizer.step(proposed, ctx.grads or {})
        return proposed

    def after_step(self, x: np.ndarray, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        if self.reforward and out.updated:
            logits = self.engine.infer(x, self.state.params, self.bn_alpha, outputs=[LOGITS])[LOGITS]
            out.logits, out.entropy = logits, entropy_of(logits)
            out.forward_passes += 1

    def _run_adapt(self, x: np.ndarray, params: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.adapt(x, params, self.bn_alpha, weights, np.zeros_like(weights))

    def _grads(self, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: result[grad] for name, grad in self.engine.artifact.grad_names.items()}

    def reset_method_state(self) -> None:
        self.optimizer.reset()

    def method_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors, meta = self.optimizer.state_dict()
        return {f"optim/{k}": v for k, v in tensors.items()}, {"optimizer": meta}

    def load_method_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        optim = {k[len("optim/") :]: v for k, v in tensors.items() if k.startswith("optim/")}
        self.optimizer.load_state_dict(optim, meta.get("optimizer", {}))
