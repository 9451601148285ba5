"""Shared mechanics of every adaptation method: the sliding window for batch size 1, the
gradient-step pipeline with its rail phases, resets and state (de)serialisation.

A method subclass overrides a small number of hooks: ``select`` (per-sample weights of the entropy
loss), optionally ``gradients`` (SAR's second call), and ``forward_and_adapt`` for forward-only
methods. Predictions always come from the forward pass that precedes the update (Tent semantics).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetta.kernels import entropy as entropy_of
from edgetta.kernels import softmax
from edgetta.runtime.engine import OrtEngine
from edgetta.runtime.optim import Optimizer, make_optimizer
from edgetta.runtime.state import AdaptState
from edgetta.safety.base import RESET_SOURCE, Event, Rail, RailEnv, StepContext

LOGITS = "logits"


@dataclass
class StepOutput:
    logits: np.ndarray
    entropy: np.ndarray
    updated: bool = False
    forward_passes: int = 0
    backward_passes: int = 0
    events: list[Event] = field(default_factory=list)


class Method:
    """Base class. ``window`` > 0 turns on the sliding window (batch size 1 with BatchNorm): the last
    ``window`` samples are forwarded together and an update happens once per ``window`` new samples."""

    name = "method"
    uses_gradients = False

    def __init__(self, window: int = 0) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = int(window)
        self._buffer: deque[np.ndarray] = deque(maxlen=max(self.window, 1))
        self._since_update = 0
        self.rails: list[Rail] = []

    def bind(self, engine: OrtEngine, state: AdaptState, rails: list[Rail], env: RailEnv) -> None:
        self.engine, self.state, self.rails, self.env = engine, state, list(rails), env
        for rail in self.rails:
            rail.bind(env)

    # -- one batch -------------------------------------------------------------------------------
    def step(self, x: np.ndarray, batch_index: int) -> StepOutput:
        if not self.window:
            return self.forward_and_adapt(x, batch_index, update=True)
        for row in x:
            self._buffer.append(row)
        self._since_update += len(x)
        update = len(self._buffer) == self.window and self._since_update >= self.window
        if update:
            self._since_update = 0
        out = self.forward_and_adapt(np.stack(self._buffer), batch_index, update=update)
        n = len(x)
        out.logits, out.entropy = out.logits[-n:], out.entropy[-n:]
        return out

    def forward_and_adapt(self, x: np.ndarray, batch_index: int, update: bool) -> StepOutput:
        raise NotImplementedError

    def context(self, logits: np.ndarray, batch_index: int, entropy: np.ndarray | None = None) -> StepContext:
        ent = entropy if entropy is not None else entropy_of(logits)
        n = logits.shape[0]
        return StepContext(
            batch_index=batch_index,
            update_count=self.state.update_count,
            num_classes=logits.shape[1],
            logits=logits,
            probs=softmax(logits),
            entropy=ent,
            weights=np.full(n, 1.0 / n, np.float32),
            params=self.state.trainable_params(),
            source=self.state.trainable_source(),
        )

    # -- reset and state -------------------------------------------------------------------------
    def reset(self, target: str = RESET_SOURCE, params: dict[str, np.ndarray] | None = None) -> None:
        """Reset to the source parameters (and statistics), or set the trainable parameters to ``params``."""
        if target == RESET_SOURCE or params is None:
            self.state.reset_to_source()
        else:
            self.state.set_trainable({k: v.copy() for k, v in params.items()})
            self.state.reset_count += 1
        self.reset_method_state(target)
        for rail in self.rails:
            rail.on_reset(target)

    def reset_method_state(self, target: str) -> None:
        """Clear method-specific history on reset (optimiser moments by default)."""

    def method_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def load_method_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass


class ForwardOnlyMethod(Method):
    """Methods that only run ``infer.onnx``: they work on any engine, fixed TensorRT engines included."""

    bn_alpha = 0.0

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = self.engine.infer(x, self.state.params, self.bn_alpha)
        return out[LOGITS], out


class GradientMethod(Method):
    """Single-step entropy minimisation on the norm affine parameters through ``adapt.onnx``.

    Pipeline per batch (rails hook in at each phase, see edgetta.safety.base):
    forward (a preview ``infer`` call when sample weights depend on the entropies) -> ``select`` ->
    rails.before_update -> adapt graph -> ``gradients`` -> rails.on_gradients -> optimiser proposes ->
    rails.after_update -> commit (or reject) -> reset if requested -> rails.after_commit.
    """

    uses_gradients = True
    preview = False  # True when ``select`` needs entropies before the adapt call

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        nesterov: bool = False,
        bn_alpha: float = 1.0,
        bn_momentum: float = 0.0,
        window: int = 0,
        reforward: bool = False,
    ) -> None:
        super().__init__(window=window)
        self.reforward = bool(reforward)  # predict after the update (one more forward) instead of before
        kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        if optimizer.lower() == "sgd":
            kwargs.update(momentum=momentum, nesterov=nesterov)
        elif optimizer.lower() == "adam":
            kwargs.update(betas=tuple(betas))
        self.optimizer: Optimizer = make_optimizer(optimizer, **kwargs)
        if not 0.0 <= bn_alpha <= 1.0:
            raise ValueError(f"bn_alpha must lie in [0, 1], got {bn_alpha}")
        self.bn_alpha = float(bn_alpha)
        self.bn_momentum = float(bn_momentum)

    def bind(self, engine: OrtEngine, state: AdaptState, rails: list[Rail], env: RailEnv) -> None:
        super().bind(engine, state, rails, env)
        gating = {"entropy_gate", "batch_entropy_gate", "diversity_gate"}
        self.needs_preview = self.preview or any(r.name in gating for r in self.rails)

    def select(self, ctx: StepContext) -> None:
        """Set ``ctx.weights`` (entropy-loss weight per sample). Default: Tent's batch mean."""

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput) -> None:
        """Hook after the adapt call (``ctx.grads`` and ``ctx.loss`` are set); SAR adds its SAM step."""

    def _run_adapt(self, x: np.ndarray, params: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.adapt(x, params, self.bn_alpha, weights, np.zeros_like(weights))

    def _grads(self, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: result[grad] for name, grad in self.engine.artifact.grad_names.items()}

    def forward_and_adapt(self, x: np.ndarray, batch_index: int, update: bool) -> StepOutput:
        if not update:
            fwd = self.engine.infer(x, self.state.params, self.bn_alpha)
            self._refresh_stats(fwd)
            return StepOutput(fwd[LOGITS], entropy_of(fwd[LOGITS]), forward_passes=1)
        if self.needs_preview:
            # Sample weights depend on the entropies: forward first, adapt graph only if something survives.
            fwd = self.engine.infer(x, self.state.params, self.bn_alpha)
            out = StepOutput(fwd[LOGITS], entropy_of(fwd[LOGITS]), forward_passes=1)
        else:
            # One call: Tent's uniform weights are known in advance (rails may still skip the update).
            n = x.shape[0]
            fwd = self._run_adapt(x, self.state.params, np.full(n, 1.0 / n, np.float32))
            out = StepOutput(fwd[LOGITS], fwd["entropy"], forward_passes=1, backward_passes=1)
        ctx = self.context(out.logits, batch_index, out.entropy)
        self.select(ctx)
        for rail in self.rails:
            rail.before_update(ctx)
        if ctx.skip_update or not np.any(ctx.weights > 0):
            self._refresh_stats(fwd)
            return self._finish(ctx, out)
        result = fwd
        if self.needs_preview:
            result = self._run_adapt(x, self.state.params, ctx.weights.astype(np.float32))
            out.backward_passes += 1
        self._refresh_stats(fwd)  # after the adapt call, so it normalises like the forward it follows
        ctx.grads, ctx.loss = self._grads(result), float(result["loss"])
        self.gradients(x, ctx, out)
        if not ctx.skip_update:
            for rail in self.rails:
                rail.on_gradients(ctx)
        if not ctx.skip_update:
            proposed = {k: v.copy() for k, v in ctx.params.items()}
            self.optimizer.step(proposed, ctx.grads)
            ctx.proposed = proposed
            for rail in self.rails:
                rail.after_update(ctx)
            if not ctx.reject_update:
                self.state.set_trainable(ctx.proposed)
                self.state.update_count += 1
                out.updated = True
        out = self._finish(ctx, out)
        if self.reforward and out.updated:
            # Predict with the updated parameters (one more forward) instead of the pre-update pass.
            logits = self.engine.infer(x, self.state.params, self.bn_alpha, outputs=[LOGITS])[LOGITS]
            out.logits, out.entropy = logits, entropy_of(logits)
            out.forward_passes += 1
        return out

    def _finish(self, ctx: StepContext, out: StepOutput) -> StepOutput:
        if ctx.proposed is None:
            # Skipped batches still reach after_update (proposed=None), so drift and collapse
            # signals gathered in before_update can request a reset without waiting for an update.
            for rail in self.rails:
                rail.after_update(ctx)
        if ctx.reset:
            self.reset(ctx.reset, ctx.reset_params)
        for rail in self.rails:
            rail.after_commit(ctx)
        out.events.extend(ctx.events)
        return out

    def _refresh_stats(self, outputs: dict[str, np.ndarray]) -> None:
        if self.bn_momentum > 0:
            self.state.refresh_running_stats(outputs, self.bn_momentum)

    def reset_method_state(self, target: str) -> None:
        self.optimizer.reset()

    def method_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors, meta = self.optimizer.state_dict()
        return {f"optim/{k}": v for k, v in tensors.items()}, {"optimizer": meta}

    def load_method_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        optim = {k[len("optim/") :]: v for k, v in tensors.items() if k.startswith("optim/")}
        self.optimizer.load_state_dict(optim, meta.get("optimizer", {}))
