"""PReLU on the gradient path: the layer type and the decomposition of its backward into forward ops.

``nn.PReLU`` (SleePyCo uses it after every convolution block) differentiates through
``aten._prelu_kernel_backward``, which the ONNX exporter cannot translate; torch registers a decomposition
of it into forward ops (``where(x > 0, g, w * g)`` for the input gradient), which the exporter's
decomposition table needs to include. The weight gradient it also yields is never used (only norm
parameters are adapted) and is pruned from the exported graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._decomp as torch_decomp
import torch.nn as nn

aten = torch.ops.aten

LAYERS: tuple[type[nn.Module], ...] = (nn.PReLU,)


def decompositions() -> dict[Callable, Callable]:
    """Entries for the exporter's decomposition table (edgetta.export.decompositions.decomposition_table)."""
    return dict(torch_decomp.get_decompositions([aten._prelu_kernel_backward]))
