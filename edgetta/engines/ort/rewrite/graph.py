"""``Graph``: a mutable view of an ONNX graph for the rewrites (producer/consumer maps, constants, node
emission at chosen positions, renaming, dead-code removal, topological order). numpy and onnx only."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

PASS_THROUGH = {"Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


class Graph:
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
        """The value of a constant held in the graph; None for anything else, including a weight whose bytes
        live in the artifact's external weights file (graphs are rewritten without loading those)."""
        if name in self.inits:
            tensor = self.inits[name]
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(tensor)
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
        while node is not None and node.op_type in PASS_THROUGH:
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
        for node in reversed(toposort(self.nodes, set(self.inits) | self.inputs)):
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


def toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
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
