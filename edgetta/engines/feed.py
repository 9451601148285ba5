"""``DataInputs``: the graph names of an artifact's non-parameter inputs and the feed built from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetta.contract import BN_ALPHA, CE_WEIGHT, ENTROPY_WEIGHT, SOFT_TARGET, SOFT_WEIGHT, Artifact


@dataclass(frozen=True)
class DataInputs:
    """Data, ``bn_alpha`` and loss-weight inputs by graph name (every other graph input is a parameter).
    ``soft_target``/``soft_weight``: the contract-v2 soft cross-entropy inputs, None in version 1 artifacts."""

    data: str
    bn_alpha: str
    entropy_weight: str
    ce_weight: str
    soft_target: str | None = None
    soft_weight: str | None = None
    num_classes: int = 0

    @classmethod
    def of(cls, artifact: Artifact) -> DataInputs:
        manifest = artifact.manifest
        soft = manifest.has_input(SOFT_TARGET) and manifest.has_input(SOFT_WEIGHT)
        return cls(
            data=artifact.input_name,
            bn_alpha=manifest.input_name(BN_ALPHA),
            entropy_weight=manifest.input_name(ENTROPY_WEIGHT),
            ce_weight=manifest.input_name(CE_WEIGHT),
            soft_target=manifest.input_name(SOFT_TARGET) if soft else None,
            soft_weight=manifest.input_name(SOFT_WEIGHT) if soft else None,
            num_classes=manifest.num_classes,
        )

    @property
    def has_soft_target(self) -> bool:
        return self.soft_target is not None and self.soft_weight is not None

    @property
    def names(self) -> frozenset[str]:
        return frozenset((self.data, self.bn_alpha, *self.loss_inputs))

    @property
    def loss_inputs(self) -> tuple[str, ...]:
        """The inputs that seed the adapt graph's gradients."""
        soft = (self.soft_target, self.soft_weight) if self.has_soft_target else ()
        return (self.entropy_weight, self.ce_weight, *soft)

    def loss_input_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The shape of each loss input at this batch size."""
        shapes = {name: (batch,) for name in self.loss_inputs}
        if self.soft_target is not None:
            shapes[self.soft_target] = (batch, self.num_classes)
        return shapes

    def feed(
        self,
        x: np.ndarray,
        bn_alpha: float,
        entropy_weight: np.ndarray | None = None,
        ce_weight: np.ndarray | None = None,
        soft_target: np.ndarray | None = None,
        soft_weight: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """float32, C-contiguous arrays for the data inputs (loss weights only when given). For an adapt run
        (``entropy_weight`` given) on a graph with the soft-target inputs, a method that gives none gets zeros
        (the soft term then adds exactly nothing)."""
        feed = {
            self.data: np.ascontiguousarray(x, dtype=np.float32),
            self.bn_alpha: np.asarray(bn_alpha, dtype=np.float32),
        }
        if entropy_weight is not None:
            feed[self.entropy_weight] = np.ascontiguousarray(entropy_weight, dtype=np.float32)
        if ce_weight is not None:
            feed[self.ce_weight] = np.ascontiguousarray(ce_weight, dtype=np.float32)
        if (soft_target is None) != (soft_weight is None):
            raise ValueError("pass soft_target and soft_weight together")
        if soft_target is not None and not self.has_soft_target:
            raise ValueError("this artifact's adapt graph has no soft-target inputs (contract version 1)")
        if self.has_soft_target and entropy_weight is not None:
            batch = feed[self.data].shape[0]
            if soft_target is None:
                soft_target = np.zeros((batch, self.num_classes), np.float32)
                soft_weight = np.zeros(batch, np.float32)
            feed[self.soft_target] = np.ascontiguousarray(soft_target, dtype=np.float32)
            feed[self.soft_weight] = np.ascontiguousarray(soft_weight, dtype=np.float32)
        return feed
