"""STAMP's stable memory (Yu et al., "STAMP: Outlier-Aware Test-Time Adaptation with Stable Memory
Replay", ECCV 2024): entropy minimisation on a class-balanced memory of reliable samples instead of the
test batch.

Per batch, following the paper (Sec. 3.2-3.3) and the authors' released loop:

- reliable samples: H_i < alpha ln C (alpha = ``margin_fraction``, 0.4 released), H the entropy of the
  pre-update prediction on the test batch; each enters the memory under its predicted class;
- the memory (prediction-balanced, ``capacity`` 64 in all) keeps one first-in-first-out list per class;
  when it is full, a new sample evicts the oldest entry of the class whose size EMA is largest
  (count_c <- 0.9 count_c + 0.1 |M_c|, refreshed each time the memory is replayed; ties broken by a
  seeded generator whose state is checkpointed);
- the model is updated on the whole memory (BatchNorm on the memory's statistics) with the self-weighted
  entropy: loss = mean_i w_i H_i, w_i = K e^{-H_i} / sum_j e^{-H_j} (K = ``capacity``), the H_i of a
  forward on the memory at the current parameters.

Predictions are the pre-update ones on the test batch. Cost per batch: infer(x), infer(memory) for the
weights, adapt(memory): 3 forward and 1 backward passes (1 forward while the memory is empty).

Differences from the released code: (1) plain SGD/Adam instead of SAM with a cosine schedule; (2) the
weights are constants (the released code also differentiates through e^{-H_i}); (3) no augmented views
(the released code averages the prediction over augmentations before the entropy filter) and no
agreement check with a copy of the source model (its small-dataset branch). Keep these in mind when
comparing numbers with the paper.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetta.contract import LOGITS, LOSS
from edgetta.errors import ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.runtime.methods.base import GradientMethod, StepOutput
from edgetta.safety.base import StepContext


class ClassBalancedMemory:
    """Per-class FIFO lists of model inputs with a total capacity; eviction from the class whose size
    EMA is largest (STAMP's prediction-balanced memory)."""

    def __init__(self, capacity: int, num_classes: int, rng: np.random.Generator) -> None:
        self.capacity, self.num_classes, self.rng = capacity, num_classes, rng
        self.reset()

    def reset(self) -> None:
        self.items: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]
        self.count = np.zeros(self.num_classes, np.float32)

    def __len__(self) -> int:
        return sum(len(c) for c in self.items)

    def _evict(self) -> None:
        filled = [c for c in range(self.num_classes) if self.items[c]]
        top = max(self.count[c] for c in filled)
        ties = [c for c in filled if self.count[c] == top]
        self.items[ties[int(self.rng.integers(len(ties)))]].pop(0)

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        for item, label in zip(x, labels):
            if len(self) >= self.capacity:
                self._evict()
            self.items[int(label)].append(np.array(item, copy=True))

    def batch(self) -> np.ndarray:
        """The memory as one batch (class order, oldest first); refreshes the class-size EMA."""
        sizes = np.array([len(c) for c in self.items], np.float32)
        self.count = (np.float32(0.9) * self.count + np.float32(0.1) * sizes).astype(np.float32)
        return np.stack([item for c in self.items for item in c])

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        labels = [c for c in range(self.num_classes) for _ in self.items[c]]
        tensors = {"count": self.count.copy(), "labels": np.asarray(labels, np.int64)}
        if labels:
            tensors["x"] = np.stack([item for c in self.items for item in c])
        return tensors, {"rng": self.rng.bit_generator.state}

    def load(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.reset()
        self.count = np.asarray(tensors["count"], np.float32).copy()
        for item, label in zip(tensors.get("x", []), tensors["labels"]):
            self.items[int(label)].append(np.array(item, copy=True))
        self.rng.bit_generator.state = meta["rng"]


class Stamp(GradientMethod):
    name = "stamp"
    preview = True

    def __init__(
        self,
        capacity: int = 64,
        margin_fraction: float = 0.4,
        margin: float | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(capacity, bool) or int(capacity) != capacity or capacity < 1:
            raise ConfigError(f"method_args.capacity must be an integer >= 1 (64 released), got {capacity}")
        if not 0.0 < float(margin_fraction) <= 1.0:
            raise ConfigError(f"method_args.margin_fraction must lie in (0, 1] (0.4 released), got {margin_fraction}")
        self.capacity, self.margin_fraction, self.margin_value = int(capacity), float(margin_fraction), margin
        self.rng = np.random.default_rng(int(seed))
        self.memory: ClassBalancedMemory | None = None
        self._x: np.ndarray | None = None
        self._replay_forwards = 0

    def margin(self, num_classes: int) -> float:
        return (
            float(self.margin_value) if self.margin_value is not None else self.margin_fraction * math.log(num_classes)
        )

    def step(self, x: np.ndarray, batch_index: int, update: bool = True) -> StepOutput:
        self._x, self._replay_forwards = x, 0
        try:
            out = super().step(x, batch_index, update)
        finally:
            self._x = None
        out.forward_passes += self._replay_forwards
        return out

    def select(self, ctx: StepContext) -> None:
        """Add the reliable samples to the memory; the update runs on the memory (weights of the test
        batch: uniform when the memory holds anything, else no update)."""
        if self.memory is None or self.memory.num_classes != ctx.num_classes:
            self.memory = ClassBalancedMemory(self.capacity, ctx.num_classes, self.rng)
        reliable = np.flatnonzero(ctx.entropy < self.margin(ctx.num_classes))
        if reliable.size and self._x is not None:
            self.memory.add(self._x[reliable], np.argmax(ctx.logits[reliable], axis=1))
        if reliable.size < len(ctx.entropy):
            ctx.emit(self.name, "gate", "unreliable samples kept out of the memory", reliable=int(reliable.size))
        if len(self.memory) == 0:
            ctx.weights = np.zeros_like(ctx.weights)
            ctx.skip_update = True

    def gradients(self, x: np.ndarray, ctx: StepContext, out: StepOutput, outputs: dict[str, np.ndarray]) -> None:
        m = self.memory.batch()
        logits = self.engine.infer(m, self.state.params, self.bn_alpha, outputs=[LOGITS])[LOGITS]
        self._replay_forwards += 1
        h = entropy_of(logits).astype(np.float64)
        inv = np.exp(-(h - h.min()))  # e^{-H} / sum e^{-H}, shifted for range
        weights = (self.capacity * inv / inv.sum() / len(m)).astype(np.float32)
        result = self._run_adapt(m, self.state.params, weights)
        out.backward_passes += 1
        ctx.grads, ctx.loss = self._grads(result), float(result[LOSS])

    def reset_method_state(self) -> None:
        super().reset_method_state()
        if self.memory is not None:
            self.memory.reset()

    def method_state(self):
        tensors, meta = super().method_state()
        stamp_meta: dict[str, Any] = {"rng": self.rng.bit_generator.state, "classes": 0}
        if self.memory is not None:
            mem, mem_meta = self.memory.state()
            tensors.update({f"stamp/{k}": v for k, v in mem.items()})
            stamp_meta = {**mem_meta, "classes": self.memory.num_classes}
        return tensors, {**meta, "stamp": stamp_meta}

    def load_method_state(self, tensors, meta) -> None:
        super().load_method_state(tensors, meta)
        saved = meta.get("stamp") or {}
        if saved.get("classes"):
            self.memory = ClassBalancedMemory(self.capacity, int(saved["classes"]), self.rng)
            self.memory.load({k[len("stamp/") :]: v for k, v in tensors.items() if k.startswith("stamp/")}, saved)
        elif saved.get("rng") is not None:
            self.rng.bit_generator.state = saved["rng"]
