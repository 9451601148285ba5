"""Backward decompositions for layers SleePyCo needs (edgetta/export/decomp_avgpool.py, decomp_prelu.py): the
traced joint graph holds only forward ops and its input gradients equal torch autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from edgetta.export import decomp_avgpool, decomp_prelu


def traced_input_grad(module: nn.Module, x: torch.Tensor, table: dict) -> tuple[torch.Tensor, set[str]]:
    """d(sum(module(x) * probe))/dx through make_fx with ``table``, and the aten ops the trace holds."""
    probe = torch.randn_like(module(x))

    def grad_of(inp: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad((module(inp) * probe).sum(), inp)[0]

    def joint(inp: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return grad_of(inp.detach().requires_grad_(True))

    graph = make_fx(joint, decomposition_table=table)(x)
    ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    want = grad_of(x.clone().requires_grad_(True))
    return (graph(x) - want).detach(), ops


class Pool(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


AVG_CASES = {
    "1-D whole length (SleePyCo gate)": ((2, 3, 5), lambda x: F.avg_pool1d(x, x.size(2), stride=x.size(2))),
    "1-D k5 s5 remainder": ((2, 3, 23), lambda x: F.avg_pool1d(x, 5)),
    "2-D k3 s2 p1 with pad counted": ((2, 4, 9, 8), lambda x: F.avg_pool2d(x, 3, 2, 1)),
    "2-D overlapping k3 s1": ((1, 2, 6, 7), lambda x: F.avg_pool2d(x, 3, 1)),
    "2-D k2 remainder rows": ((2, 2, 7, 5), lambda x: F.avg_pool2d(x, 2)),
    "2-D divisor override": ((1, 2, 6, 6), lambda x: F.avg_pool2d(x, 3, 2, 1, divisor_override=4)),
    "2-D 3-D input": ((3, 6, 6), lambda x: F.avg_pool2d(x, 2)),
}


@pytest.mark.parametrize("case", list(AVG_CASES))
def test_avg_pool_backward_matches_autograd(case):
    shape, fn = AVG_CASES[case]
    torch.manual_seed(0)
    error, ops = traced_input_grad(Pool(fn), torch.randn(*shape, dtype=torch.float64), decomp_avgpool.decompositions())
    assert "aten.avg_pool2d_backward.default" not in ops
    assert float(error.abs().max()) < 1e-12


def test_avg_pool_backward_refuses_uneven_divisors():
    fn = Pool(lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    with pytest.raises(NotImplementedError, match="different sizes"):
        traced_input_grad(fn, torch.randn(1, 2, 7, 7, dtype=torch.float64), decomp_avgpool.decompositions())


def test_prelu_backward_is_forward_ops_and_exact():
    torch.manual_seed(0)
    layer = nn.PReLU(3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.1, -0.3, 0.7]))
    module = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1).double(), layer)
    error, ops = traced_input_grad(module, torch.randn(2, 2, 11, dtype=torch.float64), decomp_prelu.decompositions())
    assert "aten._prelu_kernel_backward.default" not in ops
    assert float(error.abs().max()) < 1e-12
    assert nn.PReLU in decomp_prelu.LAYERS
