"""Graph-level rewrites that make an artifact's ONNX graphs fast on ONNX Runtime's CPU provider.

The exporter traces BatchNorm as plain reductions and elementwise ops (portable: TensorRT rejects
training-mode BatchNormalization) and its backward as the decomposition of those ops: about twenty
full-size elementwise passes per BN layer, plus ``Where`` nodes for ReLU gradients, which ORT's CPU
kernel runs ~100x slower than a ``Mul``. ``optimize_graph`` rewrites, per trainable BN layer:

- forward: ``BatchNormalization`` in training mode (one fused pass yields the output, the batch mean and
  the biased batch variance) when ``bn_alpha`` is 1, else an inference-mode ``BatchNormalization`` fed
  with the blended statistics ``m = a mu_B + (1-a) mu_run``, ``v = a var_B + (1-a) var_run``;
- backward (Ioffe & Szegedy 2015, Sec. 3, extended to the blend), with ``r = (v + eps)^-1/2``,
  ``S1 = sum dy`` and ``S2 = sum dy x - m S1`` (= ``sum dy (x - m)``) over all axes but the channel:
  ``dbeta = S1``, ``dgamma = r S2``,
  ``dx = r g dy - (a/M) r g S1 - (a/M) r^3 g S2 (x - mu_B)``: two reductions and three full passes, and
  nothing but x itself kept from the forward;

and, graph-wide: ReLU gradients ``Where(y <= 0, 0, g)`` become ``g * float(y > 0)`` with a one-byte mask
taken right after the ReLU; the 1-D max-pool backward (``MaxPool`` with ``Indices`` + ``ScatterElements``)
becomes ``ArgMax`` + ``MaxUnpool`` and plain ``MaxPool``; ``bn_alpha`` can be fixed (ORT then folds the
blend away) and graph outputs pruned with everything only they need. New nodes are placed so that, with
ORT's priority-based order, only x and the masks live from the forward to the backward.

Every pattern is checked and a layer that differs from what is expected is left as exported; the
engine additionally compares each rewritten graph with the export before using it. numpy and onnx only.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
_PASS_THROUGH = {"Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}
MIN_OPSET = 15


@dataclass(frozen=True)
class BatchNormNames:
    """Graph names of one BatchNorm layer (the artifact manifest's norm-layer table)."""

    module: str
    weight: str | None
    bias: str | None
    running_mean: str | None
    running_var: str | None
    batch_mean: str | None
    batch_var: str | None
    weight_grad: str | None = None
    bias_grad: str | None = None


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


class _Graph:
    """A mutable view of an ONNX graph: producer/consumer maps, node emission, renaming, dead-code removal."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.inputs = {i.name for i in self.graph.input}
        self.outputs = [o.name for o in self.graph.output]
        self.shapes: dict[str, list[int | str]] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        g = inferred.graph
        for v in list(g.value_info) + list(g.input) + list(g.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for t in g.initializer:
            self.shapes[t.name] = list(t.dims)
        self._counter = 0
        self._consts: dict[tuple, str] = {}
        self.memo: dict[tuple, str] = {}
        self.plane_offsets: set[str] = set()
        self.cursor: int | None = None
        self.names = {o for n in self.nodes for o in n.output} | set(self.inits) | self.inputs
        self.refresh()

    # -- maps -------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"_tta/{hint}_{self._counter}"
            if name not in self.names:
                self.names.add(name)
                return name

    # -- constants --------------------------------------------------------------------------------
    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def const(self, value: np.ndarray | float | Sequence[int], dtype: type = np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.inits[name] = numpy_helper.from_array(arr, name)
            self.shapes[name] = list(arr.shape)
            self._consts[key] = name
        return self._consts[key]

    # -- emission ---------------------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: Sequence[str],
        n_out: int = 1,
        hint: str | None = None,
        after: str | None = None,
        **attrs,
    ) -> list[str]:
        """Add a node. ``after``: place it right after the producer of that tensor (ORT runs nodes roughly in
        this order, so this decides how long its inputs stay alive); by default it goes last."""
        outs = [self.fresh(hint or op.lower()) for _ in range(n_out)]
        node = helper.make_node(op, list(inputs), outs, name=self.fresh(f"node_{op}"), **attrs)
        position = self._position_after(after) if after else self.cursor
        if position is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(position, node)
            if not after and self.cursor is not None:
                self.cursor += 1
        for o in outs:
            self.producer[o] = node
        for i in inputs:
            if i:
                self.consumers[i].append(node)
        return outs

    def op(self, op: str, *inputs: str, **attrs) -> str:
        return self.emit(op, inputs, **attrs)[0]

    def _position_after(self, tensor: str) -> int | None:
        anchor = self.producer.get(tensor)
        if anchor is None:
            return 0 if tensor in self.inputs or tensor in self.inits else None
        return next((k + 1 for k, n in enumerate(self.nodes) if n is anchor), None)

    def place_after(self, tensor: str | None) -> None:
        """Emit the following nodes, in order, right after the producer of ``tensor`` (None: at the end)."""
        self.cursor = self._position_after(tensor) if tensor else None

    def _rename_input(self, user: onnx.NodeProto, old: str, new: str) -> None:
        for k, i in enumerate(user.input):
            if i == old:
                user.input[k] = new
        self.consumers[old] = [u for u in self.consumers.get(old, []) if u is not user]
        self.consumers[new].append(user)

    def _rename_output(self, old: str, new: str) -> None:
        node = self.producer.pop(old)
        for k, o in enumerate(node.output):
            if o == old:
                node.output[k] = new
        self.producer[new] = node
        for user in list(self.consumers.get(old, [])):
            self._rename_input(user, old, new)

    def take_output(self, name: str) -> None:
        """Rename the current producer's output ``name`` (and its uses) so a new node can produce ``name``."""
        if name in self.producer:
            self._rename_output(name, self.fresh("old"))

    def produce_as(self, source: str, name: str) -> None:
        """Make the node that produces ``source`` produce it under the name ``name`` instead."""
        self._rename_output(source, name)

    def replace_uses(self, old: str, new: str) -> None:
        for user in list(self.consumers.get(old, [])):
            self._rename_input(user, old, new)

    def remove(self, node: onnx.NodeProto) -> None:
        self.nodes = [n for n in self.nodes if n is not node]
        for o in node.output:
            if self.producer.get(o) is node:
                del self.producer[o]
        for i in set(node.input):
            self.consumers[i] = [u for u in self.consumers.get(i, []) if u is not node]

    # -- queries ----------------------------------------------------------------------------------
    def axes(self, node: onnx.NodeProto) -> list[int] | None:
        for a in node.attribute:
            if a.name == "axes":
                return list(a.ints)
        if len(node.input) > 1 and node.input[1]:
            value = self.constant(node.input[1])
            return None if value is None else [int(v) for v in value.reshape(-1)]
        return None

    def attr(self, node: onnx.NodeProto, name: str, default: int | float) -> int | float:
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def through(self, name: str) -> str:
        """Follow shape-only ops (Reshape, Squeeze, ...) upstream from ``name``."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def is_scalar_const(self, name: str, value: float | None = None) -> bool:
        arr = self.constant(name)
        if arr is None or arr.size != 1:
            return False
        return value is None or float(arr.reshape(-1)[0]) == value

    # -- finishing --------------------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        """Drop dead nodes, unused initializers and inputs; sort topologically; write back."""
        live: set[str] = set(self.outputs)
        ordered: list[onnx.NodeProto] = []
        for node in reversed(_toposort(self.nodes, set(self.inits) | self.inputs)):
            if any(o in live for o in node.output if o):
                ordered.append(node)
                live.update(i for i in node.input if i)
        ordered.reverse()
        for node in ordered:
            # A MaxPool whose Indices nobody reads runs ORT's fast pooling kernel.
            if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] not in live:
                del node.output[1]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        del self.graph.initializer[:]
        self.graph.initializer.extend(t for name, t in self.inits.items() if name in live)
        kept_inputs = [i for i in self.graph.input if i.name in live]
        del self.graph.input[:]
        self.graph.input.extend(kept_inputs)
        del self.graph.value_info[:]
        return self.model


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's algorithm taking the lowest list position among ready nodes (stable for a sorted list)."""
    produced_by = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = {
        k: {produced_by[i] for i in n.input if i and i in produced_by and i not in available}
        for k, n in enumerate(nodes)
    }
    users: dict[int, list[int]] = defaultdict(list)
    for k, ds in deps.items():
        for d in ds:
            users[d].append(k)
    waiting = {k: len(ds) for k, ds in deps.items()}
    heap = [k for k, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    out: list[onnx.NodeProto] = []
    while heap:
        k = heapq.heappop(heap)
        out.append(nodes[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, u)
    if len(out) != len(nodes):
        raise ValueError("graph rewrite produced a cycle")
    return out


# ---------------------------------------------------------------------------------------------------
# Rewrites
# ---------------------------------------------------------------------------------------------------


def specialize_input(model: onnx.ModelProto, name: str, value: float) -> onnx.ModelProto:
    """Replace the graph input ``name`` by a float32 scalar constant (ORT then folds what depends on it)."""
    kept = [i for i in model.graph.input if i.name != name]
    if len(kept) == len(model.graph.input):
        return model
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return model


def rewrite_relu_grads(g: _Graph) -> int:
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


def rewrite_pool_offsets(g: _Graph) -> int:
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


def _window_pool(g: _Graph, node: onnx.NodeProto) -> tuple[list[int], int] | None:
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


def rewrite_pool_scatter(g: _Graph) -> int:
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


@dataclass
class _BatchNormSite:
    layer: BatchNormNames
    x: str
    y: str
    eps: float
    rank: int
    channels: int
    axes: list[int]


def _find_forward(g: _Graph, layer: BatchNormNames) -> _BatchNormSite | str:
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
    bias_views = [n.output[0] for n in g.consumers.get(layer.bias, []) if n.op_type in _PASS_THROUGH]
    adds = [n for v in bias_views for n in g.consumers.get(v, []) if n.op_type == "Add"]
    adds = [n for n in adds if g.shapes.get(n.output[0]) == shape]
    if len(adds) != 1:
        return "BN output (the add of the bias) not found"
    y = adds[0].output[0]
    other = [i for i in adds[0].input if i not in bias_views]
    scaled = g.producer.get(other[0]) if other else None
    weight_views = {n.output[0] for n in g.consumers.get(layer.weight, []) if n.op_type in _PASS_THROUGH}
    if scaled is None or scaled.op_type != "Mul" or not (set(scaled.input) & weight_views):
        return "BN output is not (normalised * weight) + bias"
    if not _depends_on(g, other[0], x, limit=6):
        return "BN output does not depend on its input within the expected ops"
    eps = _find_eps(g, layer.batch_var)
    if eps is None:
        return "epsilon not found"
    return _BatchNormSite(layer, x, y, eps, rank, channels, axes)


def _depends_on(g: _Graph, name: str, target: str, limit: int) -> bool:
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


def _find_eps(g: _Graph, batch_var: str) -> float | None:
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


def _depends_on_any(g: _Graph, names: set[str]) -> dict[str, bool]:
    """For every tensor: whether it depends on any of ``names`` (graph-wide, memoised)."""
    memo: dict[str, bool] = {}
    for node in _toposort(list(g.nodes), set(g.inits) | g.inputs):
        dep = any(i in names or memo.get(i, False) for i in node.input if i)
        for o in node.output:
            memo[o] = dep
    for n in names:
        memo[n] = True
    return memo


def _find_backward(
    g: _Graph, site: _BatchNormSite, seeds_dep: dict[str, bool]
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


def _channel_view(g: _Graph, name: str, rank: int) -> str:
    return g.op("Unsqueeze", name, g.const([0] + list(range(2, rank)), np.int64))


def _rewrite_layer(
    g: _Graph,
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


def _minus_alpha_over_count(g: _Graph, x: str, site: _BatchNormSite, a: float | None, alpha_input: str) -> str:
    """-a / M with M = elements per channel of x (dynamic batch), shared by layers of equal shape."""
    key = ("minus_alpha_over_count", tuple(g.shapes[x][1:]), a)
    if key not in g.memo:
        count = g.op("Div", g.op("Cast", g.op("Size", x), to=TensorProto.FLOAT), g.const(float(site.channels)))
        minus_a = g.const(-a) if a is not None else g.op("Neg", alpha_input)
        g.memo[key] = g.op("Div", minus_a, count)
    return g.memo[key]


def optimize_graph(
    model: onnx.ModelProto,
    batchnorms: Sequence[BatchNormNames],
    *,
    alpha_input: str = "bn_alpha",
    bn_alpha: float | None = None,
    outputs: Sequence[str] | None = None,
    loss_inputs: Sequence[str] = ("entropy_weight", "ce_weight"),
) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite ``model`` (a copy is returned) for ONNX Runtime's CPU provider.

    bn_alpha: fix the BN blend to this value (the graph input disappears), None keeps it an input.
    outputs: keep only these graph outputs (and what they need), None keeps all.
    loss_inputs: the inputs that seed the gradients (used to check each backward region is self-contained).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    report = RewriteReport(nodes_before=len(model.graph.node))
    if outputs is not None:
        wanted = set(outputs)
        missing = wanted - {o.name for o in model.graph.output}
        if missing:
            raise KeyError(f"graph has no output(s) {', '.join(sorted(missing))}")
        kept = [o for o in model.graph.output if o.name in wanted]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        report.skipped["graph"] = f"opset {opset} < {MIN_OPSET} (training-mode BatchNormalization, Shape slicing)"
        g = _Graph(model)
        model = g.finish()
        report.nodes_after = len(model.graph.node)
        return model, report
    g = _Graph(model)
    report.relu_grads = rewrite_relu_grads(g)
    report.pool_offsets = rewrite_pool_offsets(g)
    report.pool_scatters = rewrite_pool_scatter(g)
    seeds = {n for n in loss_inputs if n in g.inputs}
    seeds_dep = _depends_on_any(g, seeds) if seeds else {}
    for layer in batchnorms:
        site = _find_forward(g, layer)
        if isinstance(site, str):
            report.skipped[layer.module] = site
            continue
        backward = None
        if seeds and layer.weight_grad:
            found = _find_backward(g, site, seeds_dep)
            if isinstance(found, str):
                report.skipped[layer.module] = f"backward: {found}"
            else:
                backward = found
        _rewrite_layer(g, site, bn_alpha, alpha_input, backward)
        report.forward.append(layer.module)
        if backward is not None:
            report.backward.append(layer.module)
    model = g.finish()
    if bn_alpha is not None:
        model = specialize_input(model, alpha_input, bn_alpha)
    report.nodes_after = len(model.graph.node)
    return model, report
