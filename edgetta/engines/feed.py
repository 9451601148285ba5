"""``DataInputs``: the graph names of an artifact's non-parameter inputs and the feed built from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetta.contract import BN_ALPHA, CE_WEIGHT, ENTROPY_WEIGHT, Artifact


@dataclass(frozen=True)
class DataInputs:
    """Data, ``bn_alpha`` and loss-weight inputs by graph name (every other graph input is a parameter)."""

    data: str
    bn_alpha: str
    entropy_weight: str
    ce_weight: str

    @classmethod
    def of(cls, artifact: Artifact) -> DataInputs:
        manifest = artifact.manifest
        return cls(
            data=artifact.input_name,
            bn_alpha=manifest.input_name(BN_ALPHA),
            entropy_weight=manifest.input_name(ENTROPY_WEIGHT),
            ce_weight=manifest.input_name(CE_WEIGHT),
        )

    @property
    def names(self) -> frozenset[str]:
        return frozenset((self.data, self.bn_alpha, self.entropy_weight, self.ce_weight))

    @property
    def loss_inputs(self) -> tuple[str, str]:
        return self.entropy_weight, self.ce_weight

    def feed(
        self,
        x: np.ndarray,
        bn_alpha: float,
        entropy_weight: np.ndarray | None = None,
        ce_weight: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """float32, C-contiguous arrays for the data inputs (loss weights only when given)."""
        feed = {
            self.data: np.ascontiguousarray(x, dtype=np.float32),
            self.bn_alpha: np.asarray(bn_alpha, dtype=np.float32),
        }
        if entropy_weight is not None:
            feed[self.entropy_weight] = np.ascontiguousarray(entropy_weight, dtype=np.float32)
        if ce_weight is not None:
            feed[self.ce_weight] = np.ascontiguousarray(ce_weight, dtype=np.float32)
        return feed
