"""The rail protocol: small objects that look at one adaptation step and decide.

Each rail class declares what it acts on (``acts_on``, a set of :class:`Target`); that declaration fixes
its place in the pipeline (guards first, then by first target in pipeline order, then by name; see
``edgetta.safety.pipeline``) and decides whether a method can host it at all (a method offers targets;
a rail that acts on nothing the method offers is refused at config load).

A step runs in phases and every rail gets a hook per phase (all optional):

-. ``screen(ctx)`` before the call's rows reach the method, with a :class:`ScreenContext`: may exclude rows
   the caller flagged (``Adapter.process(x, flags=...)``) from every update and statistics estimate; they
   are still predicted (signal-quality rail).
0. ``choose_statistics(ctx)`` before the predictions are fixed, with a :class:`StatisticsContext`: may run
   forwards at other BN statistics (``ctx.forward``) and replace the batch's forward with one of them
   (``ctx.replace``): the predictions then come from that forward and the batch does not update
   (label-shift guard: a label-correlated batch's own statistics cannot be trusted).
1. ``before_update(ctx)``  after the forward pass: may zero/scale ``ctx.weights`` (per-sample gate) or
   set ``ctx.skip_update`` (batch-level gate). Predictions are already fixed; gating never drops them.
2. ``on_gradients(ctx)``   after the adapt graph: may modify ``ctx.grads`` (Fisher anchor) or set
   ``ctx.skip_update`` (non-finite loss or gradients).
3. ``after_update(ctx)``   after the optimiser proposed ``ctx.proposed`` (new trainable params): may
   edit it in place (stochastic restore, trust region), set ``ctx.reject_update`` (keep the old
   params), or request a reset with ``ctx.request_reset(...)`` (collapse guard, periodic, EMA drift).
4. ``after_commit(ctx)``   once the new state is in place (EMA snapshot bookkeeping).

Every decision is recorded with ``ctx.emit(...)`` as an :class:`Event` with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np

from edgetta.errors import ConfigError

RESET_SOURCE = "source"
RESET_SNAPSHOT = "snapshot"


class Target(IntEnum):
    """What a rail acts on, in pipeline order."""

    STATISTICS = 0  # which BN statistics normalise this batch (before the forward pass)
    BATCH = 1  # whether this batch updates at all (before the update)
    SAMPLE_WEIGHTS = 2  # the per-sample weights of the loss (before the update)
    GRADIENTS = 3  # the gradients of the loss (after the adapt graph)
    PROPOSAL = 4  # the proposed new values of the adapted tensors (norm parameters or BN statistics)
    RESET = 5  # requests to reset the state to the source or to a snapshot


class RailUnavailable(ConfigError):
    """A rail cannot work with this artifact (e.g. no Fisher diagonal); optional rails are then dropped."""


@dataclass(frozen=True)
class Event:
    batch_index: int
    rail: str
    kind: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        fixed = {"batch": self.batch_index, "rail": self.rail, "kind": self.kind, "reason": self.reason}
        return {**fixed, **{k: v for k, v in self.data.items() if k not in fixed}}


@dataclass(frozen=True)
class RailEnv:
    """What rails may know about the deployment, given once at bind time."""

    num_classes: int
    source: dict[str, np.ndarray]
    fisher: dict[str, np.ndarray]
    anchor: dict[str, np.ndarray]
    seed: int = 0
    # (running_mean, running_var, batch_mean, batch_var) graph names of every BatchNorm layer
    running_stats: tuple[tuple[str, str, str, str], ...] = ()


@dataclass
class StatisticsContext:
    """The statistics phase of one step: which BN statistics normalise this batch.

    ``forward(bn_alpha, running)`` runs ``infer.onnx`` on the batch with the current parameters, the running
    statistics in ``running`` (graph name -> array) replacing the current ones, and returns every output
    (logits and each BN layer's batch mean/var); each distinct call runs once. ``bn_alpha`` is the method's
    own blend and ``params`` its current graph inputs. A rail calls ``replace(outputs)`` to make a forward
    at other statistics the batch's predictions; the batch then does not update.
    """

    batch_index: int
    bn_alpha: float
    params: dict[str, np.ndarray]
    forward: Callable[[float, dict[str, np.ndarray] | None], dict[str, np.ndarray]]
    replaced: dict[str, np.ndarray] | None = None
    events: list[Event] = field(default_factory=list)

    def own(self) -> dict[str, np.ndarray]:
        """The forward at the method's own statistics (reused by the method when nothing replaces it)."""
        return self.forward(self.bn_alpha, None)

    def replace(self, outputs: dict[str, np.ndarray]) -> None:
        self.replaced = outputs

    def emit(self, rail: str, kind: str, reason: str, **data: Any) -> None:
        self.events.append(Event(self.batch_index, rail, kind, reason, data))


@dataclass
class ScreenContext:
    """Before a call's rows reach the method: the reason each row was flagged by the caller (``flags``, None =
    not flagged, e.g. a signal-quality check) and which rows to keep out of every update and statistics
    estimate (``exclude``, bool per row). Excluded rows are still predicted."""

    batch_index: int
    flags: list[str | None]
    exclude: np.ndarray
    events: list[Event] = field(default_factory=list)

    def emit(self, rail: str, kind: str, reason: str, **data: Any) -> None:
        self.events.append(Event(self.batch_index, rail, kind, reason, data))


@dataclass
class StepContext:
    batch_index: int
    update_count: int
    num_classes: int
    logits: np.ndarray
    probs: np.ndarray
    entropy: np.ndarray
    weights: np.ndarray
    params: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    grads: dict[str, np.ndarray] | None = None
    loss: float | None = None
    proposed: dict[str, np.ndarray] | None = None
    skip_update: bool = False
    reject_update: bool = False
    reset: str | None = None
    reset_params: dict[str, np.ndarray] | None = None
    events: list[Event] = field(default_factory=list)

    def emit(self, rail: str, kind: str, reason: str, **data: Any) -> None:
        self.events.append(Event(self.batch_index, rail, kind, reason, data))

    def request_reset(
        self, rail: str, target: str, reason: str, params: dict[str, np.ndarray] | None = None, **data: Any
    ) -> None:
        """Ask for a reset to the source parameters or to ``params`` (a snapshot). Source wins over snapshot."""
        if self.reset == RESET_SOURCE:
            return
        self.reset = target
        self.reset_params = params
        self.emit(rail, "reset", reason, target=target, **data)


class Rail:
    """Base class: every hook is a no-op. ``name`` is the registry key used in configs; ``acts_on`` what the
    rail may change; ``guard`` rails run first in every phase. ``spec`` (set by ``build_rail``) is the full
    configuration, defaults included, used to key checkpoint state. ``optional``: when the artifact lacks
    what the rail needs (``bind`` raises RailUnavailable) the runtime drops the rail with an event instead
    of refusing to start."""

    name = "rail"
    acts_on: ClassVar[frozenset[Target]] = frozenset()
    guard: ClassVar[bool] = False
    optional = False
    spec: dict[str, Any]

    def bind(self, env: RailEnv) -> None:
        """Receive deployment facts (class count, source params, Fisher) before the first step."""

    def screen(self, ctx: ScreenContext) -> None:
        """Before the step: mark caller-flagged rows in ``ctx.exclude`` to keep them out of adaptation."""

    def choose_statistics(self, ctx: StatisticsContext) -> None:
        pass

    def before_update(self, ctx: StepContext) -> None:
        pass

    def on_gradients(self, ctx: StepContext) -> None:
        pass

    def after_update(self, ctx: StepContext) -> None:
        pass

    def after_commit(self, ctx: StepContext) -> None:
        pass

    def on_reset(self, target: str) -> None:
        """Called after the runtime reset the state (any cause), so rails can clear their history."""

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Tensors and JSON-able values to checkpoint."""
        return {}, {}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass
