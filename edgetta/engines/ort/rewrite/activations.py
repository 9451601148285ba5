"""ReLU gradients: ``Where(y <= 0, 0, g)`` -> ``g * float(y > 0)`` with a one-byte mask kept from the forward."""

from __future__ import annotations

from onnx import TensorProto

from edgetta.engines.ort.rewrite.graph import Graph


def rewrite_relu_grads(g: Graph) -> int:
    """``Where(cond, 0, grad)`` -> ``grad * float(not cond)``, with ``LessOrEqual(y, 0)`` -> ``Greater(y, 0)``.

    The boolean mask is computed right after the ReLU (so only one byte per element, not the float activation,
    stays alive until the backward) and reshaped to the gradient's shape -- a no-op view that cannot run before
    the gradient exists, so with ORT's priority-based order the float copy is made only when it is needed."""
    count = 0
    masks: dict[str, str] = {}
    for node in list(g.nodes):
        if node.op_type != "Where" or len(node.input) != 3:
            continue
        cond, a, b = node.input
        shape = g.shapes.get(b)
        if not g.is_scalar_const(a, 0.0) or not shape or shape != g.shapes.get(node.output[0]):
            continue
        if g.shapes.get(cond) != shape:
            continue
        if cond not in masks:
            src = g.producer.get(cond)
            if src is not None and src.op_type == "LessOrEqual" and g.is_scalar_const(src.input[1]):
                masks[cond] = g.op("Greater", src.input[0], src.input[1], after=src.input[0])
            else:
                masks[cond] = g.op("Not", cond, after=cond)
        late = g.op("Reshape", masks[cond], g.op("Shape", b))
        out = node.output[0]
        g.remove(node)
        g.produce_as(g.op("Mul", b, g.op("Cast", late, to=TensorProto.FLOAT, hint="relu_mask")), out)
        count += 1
    return count
