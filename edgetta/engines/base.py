"""The ``Engine`` protocol: what adaptation methods and safety rails need from an inference engine.

An engine runs an artifact's two graphs (README "The artifact"; edgetta.contract) with the parameters of
each call: the norm-layer parameters and statistics are graph *inputs*, passed as ``params`` (graph-input
name -> float32 array; every parameter input of the graph must be present, extra entries are ignored), so
one engine serves every method and every adapted state without a rebuild.

- ``infer(x, params, bn_alpha, outputs=None)`` runs ``infer.onnx``: ``x`` is a float32 batch shaped like
  ``artifact.input_shape`` (any batch size), ``bn_alpha`` the scalar blend of batch and running BN
  statistics (0 = source model, 1 = Tent's batch statistics). It returns the outputs named in ``outputs``
  (all of ``output_names("infer")`` when None): ``logits``, ``features`` when exported, and every BN
  layer's batch mean/variance, keyed by graph name.
- ``adapt(x, params, bn_alpha, entropy_weight, ce_weight, outputs=None)`` runs ``adapt.onnx``: the same
  plus the per-sample weights (float32, shape [batch]) of the entropy and pseudo-label cross-entropy terms;
  it also returns per-sample ``entropy``, the weighted ``loss`` and one gradient per trainable parameter
  (names: ``artifact.grad_names``). Optional ``soft_target`` [batch, C] and ``soft_weight`` [batch] weight a
  soft cross-entropy term (contract v2 artifacts; zeros when omitted).
- ``output_names(which)`` lists what graph ``which`` ("infer" or "adapt") can return; asking for another
  name raises ValueError. Asking for fewer outputs may be faster (an engine may prune the graph).
- ``providers`` names the execution backends in use, ``artifact`` the loaded artifact.

Returned arrays belong to the caller (an engine never overwrites them later). A caller may change a
``params`` array in place between calls; the next call must use the new values.

A TensorRT implementation builds one engine per graph with a batch-size profile (see
edgetta.export.tensorrt), binds ``params`` as input tensors and copies the requested outputs back; fixed
TensorRT engines may serve only ``infer`` (forward-only methods).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from edgetta.contract import Artifact


@runtime_checkable
class Engine(Protocol):
    """Runs an artifact's infer and adapt graphs; see the module docstring for the contract."""

    artifact: Artifact
    providers: list[str]

    def output_names(self, which: str) -> list[str]:
        """The outputs graph ``which`` ("infer" or "adapt") can give."""
        ...

    def infer(
        self,
        x: np.ndarray,
        params: Mapping[str, np.ndarray],
        bn_alpha: float,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One call of the infer graph; ``outputs``: only these (all when None)."""
        ...

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
        """One call of the adapt graph; ``outputs``: only these (all when None). ``soft_target`` [N, C] and
        ``soft_weight`` [N]: the contract-v2 soft cross-entropy term (zeros when None)."""
        ...
