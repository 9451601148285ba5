"""CoTTA stochastic restoration (Wang et al., CVPR 2022, Eq. 6).

After each step every element of the proposed parameters returns to its source value with probability
p: theta <- M * theta0 + (1 - M) * theta, M ~ Bernoulli(p). Published p: 0.01 (CIFAR), 0.001 (ImageNet).
The generator is seeded from (env.seed, seed) and its state is checkpointed, so runs are reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetta.safety._common import check_int, check_number, update_applies
from edgetta.safety.base import Rail, RailEnv, StepContext, Target

__all__ = ["StochasticRestore"]

# Generators whose state is plain integers (default_rng uses PCG64).
_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM}


def _rng_to_json(rng: np.random.Generator) -> dict[str, Any]:
    """Bit-generator state as JSON; the 128-bit integers are hex strings so any JSON reader keeps them exact."""
    return _encode(rng.bit_generator.state)


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return {"hex": hex(value)}


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return int(value["hex"], 16)
        return {k: _decode(v) for k, v in value.items()}
    return value


class StochasticRestore(Rail):
    """Return each proposed element to the source with probability ``p``; emit "restore" with the count."""

    name = "stochastic_restore"
    acts_on = frozenset({Target.PROPOSAL})

    def __init__(self, p: float = 0.01, seed: int = 0) -> None:
        self.p = check_number(self.name, "p", p, low=0.0, high=1.0, low_open=True)
        self.seed = check_int(self.name, "seed", seed, minimum=0)
        self._env_seed = 0
        self._rng: np.random.Generator | None = None
        self._loaded = False

    def bind(self, env: RailEnv) -> None:
        self._env_seed = int(env.seed)
        if not self._loaded:
            self._rng = None  # seeded lazily from (env.seed, seed)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng([self._env_seed, self.seed])
        return self._rng

    def after_update(self, ctx: StepContext) -> None:
        proposed = ctx.proposed
        if proposed is None or not update_applies(ctx):
            return
        restored = total = 0
        for key, value in proposed.items():
            theta0 = ctx.source.get(key)
            if theta0 is None:
                continue
            arr = np.asarray(value)
            mask = self.rng.random(arr.shape) < self.p
            count = int(np.count_nonzero(mask))
            total += arr.size
            if count:
                proposed[key] = np.where(mask, np.asarray(theta0, dtype=arr.dtype), arr)
                restored += count
        if restored:
            ctx.emit(
                self.name,
                "restore",
                f"{restored} of {total} elements returned to source (p = {self.p:g})",
                restored=restored,
                total=total,
                p=self.p,
            )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"rng": _rng_to_json(self.rng)}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        saved = meta.get("rng")
        if saved is None:
            return
        state = _decode(saved)
        kind = state.get("bit_generator")
        if kind not in _BIT_GENERATORS:
            raise ValueError(f"{self.name}: unknown bit generator {kind!r} in checkpoint")
        bit_generator = _BIT_GENERATORS[kind]()
        bit_generator.state = state
        self._rng = np.random.Generator(bit_generator)
        self._loaded = True
