"""``optimize_graph``: run every rewrite on a copy of an exported graph and report what it did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgetta.contract import BN_ALPHA, CE_WEIGHT, ENTROPY_WEIGHT, NormLayer
from edgetta.engines.ort.rewrite.activations import rewrite_relu_grads
from edgetta.engines.ort.rewrite.batchnorm import rewrite_batchnorms
from edgetta.engines.ort.rewrite.graph import Graph
from edgetta.engines.ort.rewrite.pooling import rewrite_pool_offsets, rewrite_pool_scatter

MIN_OPSET = 15


@dataclass
class RewriteReport:
    """What a rewrite did: layers rewritten (forward / backward), ReLU gradients, nodes before and after."""

    forward: list[str] = field(default_factory=list)
    backward: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    relu_grads: int = 0
    pool_offsets: int = 0
    pool_scatters: int = 0
    nodes_before: int = 0
    nodes_after: int = 0


def specialize_input(model: onnx.ModelProto, name: str, value: float) -> onnx.ModelProto:
    """Replace the graph input ``name`` by a float32 scalar constant (ORT then folds what depends on it)."""
    kept = [i for i in model.graph.input if i.name != name]
    if len(kept) == len(model.graph.input):
        return model
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return model


def _keep_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> None:
    wanted = set(outputs)
    missing = wanted - {o.name for o in model.graph.output}
    if missing:
        raise KeyError(f"graph has no output(s) {', '.join(sorted(missing))}")
    kept = [o for o in model.graph.output if o.name in wanted]
    del model.graph.output[:]
    model.graph.output.extend(kept)


def optimize_graph(
    model: onnx.ModelProto,
    norm_layers: Sequence[NormLayer],
    *,
    alpha_input: str = BN_ALPHA,
    bn_alpha: float | None = None,
    outputs: Sequence[str] | None = None,
    loss_inputs: Sequence[str] = (ENTROPY_WEIGHT, CE_WEIGHT),
) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite ``model`` (a copy is returned) for ONNX Runtime's CPU provider.

    norm_layers: the artifact's norm-layer table (its BatchNorm layers are rewritten).
    bn_alpha: fix the BN blend to this value (the graph input disappears), None keeps it an input.
    outputs: keep only these graph outputs (and what they need), None keeps all.
    loss_inputs: the inputs that seed the gradients (used to check each backward region is self-contained).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    report = RewriteReport(nodes_before=len(model.graph.node))
    if outputs is not None:
        _keep_outputs(model, outputs)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    g = Graph(model)
    if opset < MIN_OPSET:
        report.skipped["graph"] = f"opset {opset} < {MIN_OPSET} (training-mode BatchNormalization, Shape slicing)"
    else:
        report.relu_grads = rewrite_relu_grads(g)
        report.pool_offsets = rewrite_pool_offsets(g)
        report.pool_scatters = rewrite_pool_scatter(g)
        report.forward, report.backward, report.skipped = rewrite_batchnorms(
            g, norm_layers, bn_alpha=bn_alpha, alpha_input=alpha_input, loss_inputs=loss_inputs
        )
    model = g.finish()
    if bn_alpha is not None and opset >= MIN_OPSET:
        model = specialize_input(model, alpha_input, bn_alpha)
    report.nodes_after = len(model.graph.node)
    return model, report
