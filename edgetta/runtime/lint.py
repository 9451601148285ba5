"""TensorRT compatibility lint for ONNX graphs (static checks; TensorRT itself is not needed).

Checks what TensorRT's ONNX parser is known to reject: non-standard op domains, ops outside its
supported set, BatchNormalization in training mode, LayerNormalization with more than one output,
reductions whose axes are not constants, float64 tensors, and dynamic dimensions other than the
leading batch dimension of graph inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

# Subset of TensorRT 10's ONNX operator support that edgetta graphs can contain.
TRT_SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace Div Dropout Einsum Elu Equal Erf Exp Expand
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mish Mod Mul Neg Not OneHot Or Pad Pow PRelu Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split()
)

_REDUCE_WITH_AXES_INPUT = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}


@dataclass
class LintReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return names


def lint_model(model: onnx.ModelProto) -> LintReport:
    report = LintReport()
    graph = model.graph
    constants = _constant_names(graph)
    for node in graph.node:
        label = f"node {node.name or node.op_type} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            report.errors.append(f"{label} uses vendor domain {node.domain!r}; TensorRT parses standard ops only")
            continue
        if node.op_type not in TRT_SUPPORTED_OPS:
            report.errors.append(f"{label}: op type not supported by TensorRT's ONNX parser")
        if node.op_type == "BatchNormalization":
            training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
            if training or len([o for o in node.output if o]) > 1:
                report.errors.append(f"{label} runs in training mode; TensorRT rejects it (use plain-op BN)")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            report.errors.append(f"{label} has more than one output; TensorRT accepts only the normalised output")
        if node.op_type in _REDUCE_WITH_AXES_INPUT and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                report.errors.append(f"{label} takes its reduction axes from a computed tensor; they must be constant")
        if node.op_type == "ScatterElements":
            report.warnings.append(f"{label}: ScatterElements with reduction needs TensorRT >= 8.6")
    for tensor in list(graph.initializer):
        if tensor.data_type == onnx.TensorProto.DOUBLE:
            report.errors.append(f"initializer {tensor.name} is float64; TensorRT has no float64 support")
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if i > 0 and not dim.HasField("dim_value"):
                report.errors.append(f"input {value.name} has a dynamic dimension {i}; only the batch dim may vary")
        if value.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            report.errors.append(f"input {value.name} is float64; TensorRT has no float64 support")
    return report
