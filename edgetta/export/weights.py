"""Weights stored once: the frozen weights of both graphs live in one ONNX external-data file.

Two steps keep one copy of every weight in an artifact:

- ``fold_keeping_weights``: constant folding treats the large weights as graph inputs, so tensors derived from
  them (the flipped, channel-transposed kernels of the convolution backward, transposed linear weights) stay
  ops in the graph instead of becoming second copies. ONNX Runtime and TensorRT fold them again in memory
  when they load the graph, so they cost nothing at run time.
- ``share_weights``: every floating-point initializer of at least ``EXTERNAL_MIN_BYTES`` is written once into a shared
  external-data file (ONNX's external data: location, offset, length) that infer.onnx and adapt.onnx both
  reference; the infer graph is cut from the adapt graph, so the two hold the same tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

EXTERNAL_MIN_BYTES = 1024  # smaller tensors (shapes, axes, scalars, tiny kernels) stay inside the graph
_PAGE = 4096  # tensors of at least a MiB start on a page boundary, so ONNX Runtime can map them
_ALIGN = 64


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def is_weight(tensor: onnx.TensorProto) -> bool:
    """A floating-point constant of at least EXTERNAL_MIN_BYTES (integer constants, index tables included,
    stay in the graph where folding and the engine's rewrites can read them)."""
    if tensor.data_type not in _FLOATS:
        return False
    size = len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes
    return size >= EXTERNAL_MIN_BYTES


def fold_keeping_weights(model: onnx.ModelProto, fold: Callable[[onnx.ModelProto], onnx.ModelProto]) -> onnx.ModelProto:
    """``fold(model)`` with every weight (``is_weight``) presented as a graph input, so
    nothing computed from a weight is folded into a new constant; the weights are restored afterwards."""
    graph = model.graph
    weights = [t for t in graph.initializer if is_weight(t)]
    names = {t.name for t in weights}
    kept = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    folded = fold(model)
    inputs = [i for i in folded.graph.input if i.name not in names]
    del folded.graph.input[:]
    folded.graph.input.extend(inputs)
    used = {name for node in all_nodes(folded.graph) for name in node.input}
    folded.graph.initializer.extend(t for t in weights if t.name in used)
    return folded


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)
            for sub in attr.graphs:
                yield from all_nodes(sub)


def share_weights(graph_paths: Sequence[Path], weights_path: Path) -> int:
    """Move the large initializers of the graphs at ``graph_paths`` into ``weights_path`` (each distinct
    tensor once, referenced by offset from every graph holding it) and rewrite the graphs; return the
    number of bytes written. The weights file's name is stored relative to each graph's folder."""
    offsets: dict[str, tuple[int, int]] = {}
    models = [onnx.load(str(path)) for path in graph_paths]
    with open(weights_path, "wb") as handle:
        for model in models:
            for tensor in model.graph.initializer:
                if not is_weight(tensor):
                    continue
                data = numpy_helper.to_array(tensor).tobytes()  # little-endian, as ONNX external data is
                key = hashlib.sha256(data).hexdigest()
                if key not in offsets:
                    align = _PAGE if len(data) >= (1 << 20) else _ALIGN
                    handle.write(b"\0" * (-handle.tell() % align))
                    offsets[key] = (handle.tell(), len(data))
                    handle.write(data)
                offset, length = offsets[key]
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                tensor.raw_data = data
                set_external_data(tensor, weights_path.name, offset, length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
        written = handle.tell()
    for model, path in zip(models, graph_paths):
        onnx.save(model, str(path))
    return written
