"""TensorRT lint (edgetta.runtime.lint): a clean hand-made graph passes; a graph that breaks exactly one rule
is reported for that rule and nothing else."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetta.runtime.lint import lint_model

OPSET = 18
IR_VERSION = 8  # explicit: the onnx package's default may be newer than onnxruntime accepts
FLOAT = TensorProto.FLOAT


def tensor(name: str, shape: list, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
    domains: tuple[str, ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "lint_case",
        inputs or [tensor("x", ["batch", 3, 4, 4])],
        outputs or [tensor("y", ["batch", 3, 4, 4])],
        initializer=initializers or [],
    )
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def axes(name: str = "axes", values: tuple[int, ...] = (2, 3)) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def clean_model() -> onnx.ModelProto:
    """x -> Relu -> ReduceMean over constant axes: everything TensorRT's parser accepts."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0),
    ]
    return make_model(nodes, outputs=[tensor("y", ["batch", 3])], initializers=[axes()])


def single_error(model: onnx.ModelProto) -> str:
    """The one lint error of ``model`` (a well-formed ONNX model that breaks exactly one rule)."""
    onnx.checker.check_model(model)
    report = lint_model(model)
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    assert report.to_json()["ok"] is False
    return report.errors[0]


def test_clean_graph_passes_and_runs_in_onnxruntime():
    model = clean_model()
    onnx.checker.check_model(model)
    report = lint_model(model)
    assert report.ok and report.errors == [] and report.warnings == []
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((2, 3, 4, 4), np.float32)})
    assert y.shape == (2, 3)


def test_op_outside_tensorrt_support_is_an_error():
    nodes = [helper.make_node("Unique", ["x"], ["y"])]
    assert "op type not supported by TensorRT" in single_error(make_model(nodes, outputs=[tensor("y", ["n"])]))


def test_vendor_domain_is_an_error():
    nodes = [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")]
    error = single_error(make_model(nodes, domains=("com.microsoft",)))
    assert "vendor domain 'com.microsoft'" in error


def test_training_mode_batchnorm_is_an_error():
    c = 3
    stats = [numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in (("g", 1), ("b", 0), ("m", 0), ("v", 1))]
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "running_mean", "running_var"], training_mode=1
        )
    ]
    outputs = [tensor("y", ["batch", c, 4, 4]), tensor("running_mean", [c]), tensor("running_var", [c])]
    assert "training mode" in single_error(make_model(nodes, outputs=outputs, initializers=stats))


def test_inference_batchnorm_passes():
    stats = [numpy_helper.from_array(np.full(3, v, np.float32), n) for n, v in (("g", 1), ("b", 0), ("m", 0), ("v", 1))]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])]
    assert lint_model(make_model(nodes, initializers=stats)).ok


def test_layernorm_with_more_than_one_output_is_an_error():
    scale = [numpy_helper.from_array(np.ones(4, np.float32), "scale")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean", "inv_std"], axis=-1)]
    stats = ["batch", 3, 4, 1]
    outputs = [tensor("y", ["batch", 3, 4, 4]), tensor("mean", stats), tensor("inv_std", stats)]
    assert "more than one output" in single_error(make_model(nodes, outputs=outputs, initializers=scale))
    single = [helper.make_node("LayerNormalization", ["x", "scale"], ["y"], axis=-1)]
    assert lint_model(make_model(single, initializers=scale)).ok


def test_reduction_axes_from_a_computed_tensor_are_an_error():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=2),  # [4, 4]: computed, not a constant
        helper.make_node("Sub", ["shape", "offset"], ["computed_axes"]),  # [2, 3]
        helper.make_node("ReduceSum", ["x", "computed_axes"], ["y"], keepdims=0),
    ]
    offset = [numpy_helper.from_array(np.asarray([2, 1], np.int64), "offset")]
    model = make_model(nodes, outputs=[tensor("y", ["batch", 3])], initializers=offset)
    assert "reduction axes from a computed tensor" in single_error(model)


def test_reduction_axes_from_a_constant_node_pass():
    const = helper.make_node("Constant", [], ["axes"], value=axes("value"))
    nodes = [const, helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)]
    assert lint_model(make_model(nodes, outputs=[tensor("y", ["batch", 3])])).ok


def test_float64_initializer_is_an_error():
    weight = [numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float64), "w64")]
    nodes = [
        helper.make_node("Cast", ["w64"], ["w"], to=FLOAT),
        helper.make_node("Mul", ["x", "w"], ["y"]),
    ]
    assert "initializer w64 is float64" in single_error(make_model(nodes, initializers=weight))


def test_float64_input_is_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=FLOAT)]
    inputs = [tensor("x", ["batch", 3, 4, 4], TensorProto.DOUBLE)]
    assert "input x is float64" in single_error(make_model(nodes, inputs=inputs))


@pytest.mark.parametrize("dim", ["height", None])
def test_dynamic_non_batch_dimension_is_an_error(dim):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    inputs, outputs = [tensor("x", ["batch", 3, dim, 4])], [tensor("y", ["batch", 3, dim, 4])]
    assert "dynamic dimension 2" in single_error(make_model(nodes, inputs=inputs, outputs=outputs))


def test_scatter_elements_is_a_warning_not_an_error():
    indices = [numpy_helper.from_array(np.zeros((1, 3, 4, 4), np.int64), "idx")]
    nodes = [helper.make_node("ScatterElements", ["x", "idx", "x"], ["y"], axis=0, reduction="add")]
    report = lint_model(make_model(nodes, initializers=indices))
    assert report.ok and len(report.warnings) == 1 and "TensorRT >= 8.6" in report.warnings[0]
