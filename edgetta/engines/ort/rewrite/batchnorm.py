"""BatchNorm layers: the traced plain-op forward becomes one ``BatchNormalization`` node and the traced
backward a closed form (Ioffe & Szegedy 2015, Sec. 3, extended to the ``bn_alpha`` blend; see the package
docstring for the equations). Every pattern is checked; a layer that differs is left as exported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from edgetta.contract import NormLayer
from edgetta.engines.ort.rewrite.graph import PASS_THROUGH, Graph, toposort

_GRAD_REGION_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Expand",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "ReduceSum",
    "ReduceMean",
    "Identity",
}


@dataclass
class _BatchNormSite:
    layer: NormLayer
    x: str
    y: str
    eps: float
    rank: int
    channels: int
    axes: list[int]


def _find_forward(g: Graph, layer: NormLayer) -> _BatchNormSite | str:
    """Locate x (the BN input), y (its output) and eps of a traced plain-op BatchNorm."""
    if not (layer.batch_mean and layer.batch_var and layer.weight and layer.bias):
        return "layer has no affine parameters or batch statistics"
    mean_node = g.producer.get(layer.batch_mean)
    if mean_node is None or mean_node.op_type != "ReduceMean" or g.attr(mean_node, "keepdims", 1) != 0:
        return "batch mean is not a ReduceMean"
    x = mean_node.input[0]
    shape = g.shapes.get(x)
    if not shape or len(shape) < 3 or not isinstance(shape[1], int) or shape[1] <= 0:
        return "BN input has no static channel dimension"
    rank, channels = len(shape), int(shape[1])
    axes = [0] + list(range(2, rank))
    got = g.axes(mean_node)
    if got is None or sorted(a % rank for a in got) != axes:
        return "batch mean reduces unexpected axes"
    # y = Add(Mul(..., view(weight)), view(bias)): the only Add consuming a view of the bias.
    bias_views = [n.output[0] for n in g.consumers.get(layer.bias, []) if n.op_type in PASS_THROUGH]
    adds = [n for v in bias_views for n in g.consumers.get(v, []) if n.op_type == "Add"]
    adds = [n for n in adds if g.shapes.get(n.output[0]) == shape]
    if len(adds) != 1:
        return "BN output (the add of the bias) not found"
    y = adds[0].output[0]
    other = [i for i in adds[0].input if i not in bias_views]
    scaled = g.producer.get(other[0]) if other else None
    weight_views = {n.output[0] for n in g.consumers.get(layer.weight, []) if n.op_type in PASS_THROUGH}
    if scaled is None or scaled.op_type != "Mul" or not (set(scaled.input) & weight_views):
        return "BN output is not (normalised * weight) + bias"
    if not _depends_on(g, other[0], x, limit=6):
        return "BN output does not depend on its input within the expected ops"
    eps = _find_eps(g, layer.batch_var)
    if eps is None:
        return "epsilon not found"
    return _BatchNormSite(layer, x, y, eps, rank, channels, axes)


def _depends_on(g: Graph, name: str, target: str, limit: int) -> bool:
    frontier = {name}
    for _ in range(limit):
        if target in frontier:
            return True
        nxt = set()
        for t in frontier:
            node = g.producer.get(t)
            if node is not None:
                nxt.update(i for i in node.input if i)
        frontier = nxt
    return target in frontier


def _find_eps(g: Graph, batch_var: str) -> float | None:
    """Walk Mul/Add consumers from the batch variance to the Sqrt; eps is the scalar constant added."""
    frontier = [(batch_var, 0.0)]
    for _ in range(5):
        nxt = []
        for name, eps in frontier:
            for node in g.consumers.get(name, []):
                if node.op_type == "Sqrt":
                    return eps if eps > 0 else None
                if node.op_type in ("Mul", "Add", "Reshape"):
                    extra = eps
                    if node.op_type == "Add":
                        for i in node.input:
                            if i != name and g.is_scalar_const(i):
                                extra += float(g.constant(i).reshape(-1)[0])
                    nxt.append((node.output[0], extra))
        frontier = nxt
    return None


def _depends_on_any(g: Graph, names: set[str]) -> dict[str, bool]:
    """For every tensor: whether it depends on any of ``names`` (graph-wide, memoised)."""
    memo: dict[str, bool] = {}
    for node in toposort(list(g.nodes), set(g.inits) | g.inputs):
        dep = any(i in names or memo.get(i, False) for i in node.input if i)
        for o in node.output:
            memo[o] = dep
    for n in names:
        memo[n] = True
    return memo


def _find_backward(
    g: Graph, site: _BatchNormSite, seeds_dep: dict[str, bool]
) -> tuple[str, list[onnx.NodeProto], str | None] | str:
    """dy (gradient of the BN output), the traced backward region, and dx (None when not computed)."""
    layer = site.layer
    if not (layer.weight_grad and layer.bias_grad):
        return "no gradient outputs"
    if layer.bias_grad not in g.outputs or layer.weight_grad not in g.outputs:
        return "gradient outputs pruned"
    red = g.producer.get(g.through(layer.bias_grad))
    if red is None or red.op_type != "ReduceSum":
        return "bias gradient is not a ReduceSum"
    axes = g.axes(red)
    if axes is None or sorted(a % site.rank for a in axes) != site.axes:
        return "bias gradient reduces unexpected axes"
    dy = red.input[0]
    if g.shapes.get(dy) != g.shapes.get(site.x):
        return "dy shape differs from the BN input"
    # The region starts at the products of dy with this layer's own forward tensors (its normalised
    # input, its weight); dy and its sum may be shared with another layer (a shortcut's BN) or a residual.
    starts = []
    for node in g.consumers.get(dy, []):
        others = [i for i in node.input if i != dy]
        if node.op_type != "Mul" or not others or any(seeds_dep.get(i, False) for i in others):
            continue
        if any(_depends_on(g, i, site.x, 6) or _depends_on(g, i, layer.weight, 3) for i in others):
            starts.append(node)
    region = list(starts)
    seen = {id(n) for n in region}
    produced = {o for n in region for o in n.output}
    changed = True
    while changed:
        changed = False
        for name in list(produced):
            for node in g.consumers.get(name, []):
                if id(node) in seen or node.op_type not in _GRAD_REGION_OPS:
                    continue
                if any(seeds_dep.get(i, False) and i != dy and i not in produced for i in node.input if i):
                    continue
                seen.add(id(node))
                region.append(node)
                produced.update(o for o in node.output if o)
                changed = True
    boundary = set()
    for name in produced:
        if name in g.outputs or any(id(u) not in seen for u in g.consumers.get(name, [])):
            boundary.add(name)
    if layer.weight_grad not in boundary:
        return "weight gradient not produced by the backward region"
    rest = boundary - {layer.weight_grad, layer.bias_grad}
    full = [b for b in rest if g.shapes.get(b) == g.shapes.get(site.x)]
    if len(rest) > 1 or len(full) != len(rest):
        return "backward region has unexpected outputs"
    return dy, region, (full[0] if full else None)


def _channel_view(g: Graph, name: str, rank: int) -> str:
    return g.op("Unsqueeze", name, g.const([0] + list(range(2, rank)), np.int64))


def _rewrite_layer(
    g: Graph,
    site: _BatchNormSite,
    alpha: float | None,
    alpha_input: str,
    backward: tuple[str, list[onnx.NodeProto], str | None] | None,
) -> None:
    layer = site.layer
    x, c = site.x, site.channels
    has_running = bool(layer.running_mean and layer.running_var)
    g.place_after(x)
    if alpha == 1.0 or not has_running:
        # One fused pass: output, batch mean, biased batch variance (momentum 0 -> outputs = batch stats).
        zeros, ones = g.const(np.zeros(c)), g.const(np.ones(c))
        y, mean, var = g.emit(
            "BatchNormalization",
            [x, layer.weight, layer.bias, zeros, ones],
            n_out=3,
            epsilon=site.eps,
            momentum=0.0,
            training_mode=1,
            hint="bn",
        )
        for old, new in ((layer.batch_mean, mean), (layer.batch_var, var)):
            g.take_output(old)
            g.produce_as(new, old)
        batch_mean, batch_var = layer.batch_mean, layer.batch_var
        blend_mean, blend_var = batch_mean, batch_var
        a = 1.0
    else:
        batch_mean, batch_var = layer.batch_mean, layer.batch_var
        if alpha == 0.0:
            blend_mean, blend_var = layer.running_mean, layer.running_var
        else:
            a_in = g.const(alpha) if alpha is not None else alpha_input
            one_minus = g.op("Sub", g.const(1.0), a_in)
            blend_mean = g.op("Add", g.op("Mul", a_in, batch_mean), g.op("Mul", one_minus, layer.running_mean))
            blend_var = g.op("Add", g.op("Mul", a_in, batch_var), g.op("Mul", one_minus, layer.running_var))
        a = alpha
        y = g.op("BatchNormalization", x, layer.weight, layer.bias, blend_mean, blend_var, epsilon=site.eps, hint="bn")
    g.replace_uses(site.y, y)
    g.place_after(None)
    if backward is None:
        return
    dy, region, dx_old = backward
    g.place_after(dy)
    # -- backward --------------------------------------------------------------------------------
    axes = g.const(site.axes, np.int64)
    s1 = g.op("ReduceSum", dy, axes, keepdims=0, hint="sum_dy")
    r2 = g.op("Reciprocal", g.op("Add", blend_var, g.const(site.eps)))  # r^2 = 1 / (v + eps)
    r = g.op("Sqrt", r2)
    # Everything from x itself (no centred copy: one pass less, and nothing but x and the ReLU mask has
    # to stay alive from the forward to the backward): S2 = sum dy (x - m) = sum dy x - m S1.
    s2 = g.op("ReduceSum", g.op("Mul", dy, x), axes, keepdims=0, hint="sum_dy_x")
    s2 = g.op("Sub", s2, g.op("Mul", blend_mean, s1))
    dgamma = g.op("Mul", r, s2)
    if dx_old is not None:
        rg = g.op("Mul", r, layer.weight)
        if a is not None and a == 0.0:
            dx = g.op("Mul", dy, _channel_view(g, rg, site.rank), hint="dx")
        else:
            # dx = rg dy + shift + slope (x - mu_B), shift = -(a/M) rg S1, slope = -(a/M) r^2 rg S2
            t1 = g.op("Mul", rg, _minus_alpha_over_count(g, x, site, a, alpha_input))
            slope = g.op("Mul", g.op("Mul", t1, r2), s2)
            shift = g.op("Sub", g.op("Mul", t1, s1), g.op("Mul", slope, batch_mean))
            zeros, ones = g.const(np.zeros(site.channels)), g.const(np.ones(site.channels))
            first = g.op("BatchNormalization", dy, rg, shift, zeros, ones, epsilon=0.0, hint="dx_dy")
            second = g.op("Mul", x, _channel_view(g, slope, site.rank), hint="dx_x")
            dx = g.op("Add", first, second, hint="dx")
        g.replace_uses(dx_old, dx)
    for old, value in ((layer.bias_grad, s1), (layer.weight_grad, dgamma)):
        g.take_output(old)
        g.produce_as(value, old)
    g.place_after(None)


def _minus_alpha_over_count(g: Graph, x: str, site: _BatchNormSite, a: float | None, alpha_input: str) -> str:
    """-a / M with M = elements per channel of x (dynamic batch), shared by layers of equal shape."""
    key = ("minus_alpha_over_count", tuple(g.shapes[x][1:]), a)
    if key not in g.memo:
        count = g.op("Div", g.op("Cast", g.op("Size", x), to=TensorProto.FLOAT), g.const(float(site.channels)))
        minus_a = g.const(-a) if a is not None else g.op("Neg", alpha_input)
        g.memo[key] = g.op("Div", minus_a, count)
    return g.memo[key]


def rewrite_batchnorms(
    g: Graph,
    layers: Sequence[NormLayer],
    *,
    bn_alpha: float | None,
    alpha_input: str,
    loss_inputs: Sequence[str],
) -> tuple[list[str], list[str], dict[str, str]]:
    """Rewrite every BatchNorm layer of ``layers`` found in ``g``: (forward rewritten, backward rewritten,
    skipped module -> reason). A backward is rewritten only for trainable layers with gradient outputs."""
    forward: list[str] = []
    backward_done: list[str] = []
    skipped: dict[str, str] = {}
    seeds = {n for n in loss_inputs if n in g.inputs}
    seeds_dep = _depends_on_any(g, seeds) if seeds else {}
    for layer in layers:
        if layer.kind != "batchnorm":
            continue
        site = _find_forward(g, layer)
        if isinstance(site, str):
            skipped[layer.module] = site
            continue
        backward = None
        if seeds and layer.trainable and layer.weight_grad:
            found = _find_backward(g, site, seeds_dep)
            if isinstance(found, str):
                skipped[layer.module] = f"backward: {found}"
            else:
                backward = found
        _rewrite_layer(g, site, bn_alpha, alpha_input, backward)
        forward.append(layer.module)
        if backward is not None:
            backward_done.append(layer.module)
    return forward, backward_done, skipped
