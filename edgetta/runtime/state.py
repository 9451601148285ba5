"""Adaptation state held in numpy: current graph parameters (norm affine values and BN running
statistics), the source values they started from, and counters. Optimiser, method and rail state
live with their owners; the runtime gathers all of them for a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgetta.contract import Artifact


def copy_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in arrays.items()}


@dataclass
class AdaptState:
    params: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    trainable: list[str]
    running_stats: list[tuple[str, str, str, str]]  # (running_mean, running_var, batch_mean, batch_var)
    update_count: int = 0
    reset_count: int = 0

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> AdaptState:
        source = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in artifact.params.items()}
        stats = [
            (la.running_mean, la.running_var, la.batch_mean, la.batch_var)
            for la in artifact.norm_layers
            if la.running_mean and la.batch_mean
        ]
        return cls(params=copy_arrays(source), source=source, trainable=artifact.trainable_names, running_stats=stats)

    def trainable_params(self) -> dict[str, np.ndarray]:
        return {k: self.params[k] for k in self.trainable}

    def values(self, names: list[str]) -> dict[str, np.ndarray]:
        return {k: self.params[k] for k in names}

    def source_values(self, names: list[str]) -> dict[str, np.ndarray]:
        return {k: self.source[k] for k in names}

    def set_values(self, values: dict[str, np.ndarray]) -> None:
        """Replace the named graph-input tensors (norm parameters or statistics)."""
        for k, v in values.items():
            if k not in self.params:
                raise KeyError(f"{k!r} is not a parameter of this artifact")
            self.params[k] = np.ascontiguousarray(v, dtype=np.float32)

    def reset_to_source(self) -> None:
        self.params = copy_arrays(self.source)
        self.reset_count += 1

    def refresh_running_stats(self, outputs: dict[str, np.ndarray], momentum: float) -> None:
        """BN statistics refresh (Schneider et al. 2020; StableSleep uses m = 0.01):
        mu <- (1-m) mu + m mu_batch, var <- (1-m) var + m var_batch, with the graph's biased batch variance."""
        for rm, rv, bm, bv in self.running_stats:
            self.params[rm] = ((1 - momentum) * self.params[rm] + momentum * outputs[bm]).astype(np.float32)
            self.params[rv] = ((1 - momentum) * self.params[rv] + momentum * outputs[bv]).astype(np.float32)
