"""Max-pool backward: plane offsets computed arithmetically, and the 1-D ``MaxPool``-``Indices`` +
``ScatterElements`` backward turned into ``ArgMax`` + ``MaxUnpool`` (the forward pool loses its ``Indices``)."""

from __future__ import annotations

import numpy as np
import onnx

from edgetta.engines.ort.rewrite.graph import Graph


def rewrite_pool_offsets(g: Graph) -> int:
    """The exporter's max-pool backward takes each (n, c) plane's flat-index offset from a 1x1 ``MaxPool``
    with ``Indices`` over the whole input (a full pass writing int64). Compute ``(n*C + c) * spatial``
    arithmetically instead."""
    count = 0
    for node in list(g.nodes):
        if node.op_type != "MaxPool" or len(node.output) < 2 or not node.output[1]:
            continue
        shape = g.shapes.get(node.input[0])
        if not shape or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
            continue
        spatial = len(shape) - 2
        ones = [1] * spatial
        if (
            list(g.attr(node, "kernel_shape", [])) != ones
            or list(g.attr(node, "strides", ones)) != ones
            or any(list(g.attr(node, "pads", [0] * 2 * spatial)))
            or list(g.attr(node, "dilations", ones)) != ones
            or g.attr(node, "storage_order", 0) != 0
            or g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        ):
            continue
        values, indices = node.output[0], node.output[1]
        users = g.consumers.get(indices, [])
        if values in g.outputs or g.consumers.get(values) or len(users) != 1 or users[0].op_type != "Slice":
            continue
        sl = users[0]
        parts = [g.constant(i) if i else None for i in list(sl.input[1:]) + [""] * (5 - len(sl.input))]
        starts, ends, axes, steps = parts[:4]
        if starts is None or ends is None or axes is None:
            continue
        rank = len(shape)
        if sorted(int(a) % rank for a in axes) != list(range(2, rank)) or np.any(starts != 0) or np.any(ends != 1):
            continue
        if steps is not None and np.any(steps != 1):
            continue
        channels, plane = int(shape[1]), int(np.prod(shape[2:]))
        batch = g.op("Shape", node.input[0], start=0, end=1)
        planes = g.op("Squeeze", g.op("Mul", batch, g.const([channels], np.int64)), g.const([0], np.int64))
        flat = g.op("Range", g.const(0, np.int64), planes, g.const(1, np.int64))
        offsets = g.op("Mul", flat, g.const(plane, np.int64))
        out = g.op("Reshape", offsets, g.const([-1, channels] + [1] * spatial, np.int64))
        target = sl.output[0]
        g.remove(sl)
        g.remove(node)
        g.produce_as(out, target)
        g.plane_offsets.add(target)
        count += 1
    return count


def _window_pool(g: Graph, node: onnx.NodeProto) -> tuple[list[int], int] | None:
    """(input shape, k) when ``node`` is a MaxPool over non-overlapping windows of k along the last axis only."""
    shape = g.shapes.get(node.input[0])
    if node.op_type != "MaxPool" or not shape or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        return None
    spatial = len(shape) - 2
    kernel = list(g.attr(node, "kernel_shape", []))
    if len(kernel) != spatial or any(k != 1 for k in kernel[:-1]) or any(d != 1 for d in shape[2:-1]):
        return None
    k = int(kernel[-1])
    if (
        list(g.attr(node, "strides", [1] * spatial)) != [1] * (spatial - 1) + [k]
        or any(list(g.attr(node, "pads", [0] * 2 * spatial)))
        or list(g.attr(node, "dilations", [1] * spatial)) != [1] * spatial
        or g.attr(node, "ceil_mode", 0) != 0
        or g.attr(node, "storage_order", 0) != 0
        or g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        or shape[-1] < k
    ):
        return None
    return shape, k


def rewrite_pool_scatter(g: Graph) -> int:
    """The exporter's max-pool backward: ``MaxPool`` with ``Indices`` forward, then ``ScatterElements(add)`` of
    the output gradient into zeros at ``indices - plane offset``. For non-overlapping windows along the last
    axis (1-D pooling) the indices are each window's first arg-max (``ArgMax``; torch also routes to the
    first maximum) and the scatter is a ``MaxUnpool``; the forward ``MaxPool`` loses its slow ``Indices``."""
    count = 0
    for node in list(g.nodes):
        if node.op_type != "ScatterElements" or g.attr(node, "reduction", b"none") not in (b"add", "add"):
            continue
        data, idx, upd = node.input
        out_shape = g.shapes.get(node.output[0])
        if not out_shape or len(out_shape) != 2 or g.attr(node, "axis", 0) % 2 != 1:
            continue
        zeros = g.producer.get(data)
        if zeros is None or zeros.op_type != "Expand" or not g.is_scalar_const(zeros.input[0], 0.0):
            continue
        reshape = g.producer.get(idx)
        sub = g.producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
        if sub is None or sub.op_type != "Sub" or sub.input[1] not in g.plane_offsets:
            continue
        pool = g.producer.get(sub.input[0])
        if pool is None or len(pool.output) < 2 or pool.output[1] != sub.input[0]:
            continue
        found = _window_pool(g, pool)
        if found is None:
            continue
        shape, k = found
        length, windows, channels = shape[-1], shape[-1] // k, shape[1]
        if out_shape[1] != length or g.shapes.get(idx, [None, None])[1] != windows:
            continue
        lead = [-1, channels] + [1] * (len(shape) - 3)
        x = pool.input[0]
        g.place_after(pool.output[0])  # the arg-max runs with the forward pass, so x need not stay alive
        blocks = x
        if windows * k != length:
            blocks = g.op("Slice", x, g.const([0], np.int64), g.const([windows * k], np.int64), g.const([-1], np.int64))
        blocks = g.op("Reshape", blocks, g.const(lead + [windows, k], np.int64))
        first = g.op("ArgMax", blocks, axis=-1, keepdims=0, select_last_index=0)
        flat_index = g.op("Add", g.op("Add", first, g.const(np.arange(windows) * k, np.int64)), sub.input[1])
        g.place_after(upd)
        grads = g.op("Reshape", upd, g.const(lead + [windows], np.int64))
        spatial = len(shape) - 2
        unpooled = g.op(
            "MaxUnpool",
            grads,
            flat_index,
            g.op("Shape", x),
            kernel_shape=[1] * (spatial - 1) + [k],
            strides=[1] * (spatial - 1) + [k],
        )
        flat = g.op("Reshape", unpooled, g.const([-1, length], np.int64))
        g.place_after(None)
        target = node.output[0]
        g.remove(node)
        g.produce_as(flat, target)
        count += 1
    return count
