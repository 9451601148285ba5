"""Trace-friendly twins of torch layers whose backward would otherwise specialise the batch size.

``F.linear`` on an input of rank >= 3, differentiated under ``torch.func.grad``, makes the tracer
guard on the concrete batch size (the exported graph then only runs at the example's batch).
Flattening to 2-D around the matmul keeps the batch dimension symbolic.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def flat_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dim() <= 2:
        return F.linear(x, weight, bias)
    out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(tuple(x.shape[:-1]) + (weight.shape[0],))


class FlatLinear(nn.Module):
    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flat_linear(x, self.weight, self.bias)


def rewrite_linear(model: nn.Module) -> None:
    for path, module in list(model.named_modules()):
        if type(module) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear) and path:
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, name, FlatLinear(module))
