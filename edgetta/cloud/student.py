"""The cloud's torch copy of the edge model: the architecture from a SPEC, the weights from the artifact.

An artifact keeps its norm-layer parameters and statistics by name in ``params.safetensors``; every other
weight (convolutions, the classifier) is a nameless initializer of ``infer.onnx``. Without a full
``state_dict`` (``weights``), those are matched to the SPEC module's remaining tensors by shape, in
declaration order (a 2-D weight may appear transposed, as ``Gemm`` stores it). Whatever the source, the
result is checked against the artifact itself: its logits must equal ``infer.onnx``'s on a probe batch, so a
wrong SPEC or weights file is refused before the learner distils anything for the devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgetta.contract import Artifact
from edgetta.errors import ArtifactError, ConfigError

# ops whose inputs carry weights; Transpose: a classifier weight stored [in, out] and transposed in the graph
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Transpose"})
PARITY_TOLERANCE = 1e-3  # max |logit difference|, relative to the largest logit magnitude


def _norm_tensors(artifact: Artifact) -> dict[str, np.ndarray]:
    """Norm parameters and running statistics of the artifact, by their torch ``state_dict`` name."""
    names = set()
    for layer in artifact.norm_layers:
        names.update(n for n in (layer.weight, layer.bias, layer.running_mean, layer.running_var) if n)
    return {name: artifact.params[name] for name in names if name in artifact.params}


def _graph_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """Float initializers of ``path`` that feed a weight-bearing node, in declaration order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consumed = {name for node in model.graph.node if node.op_type in _WEIGHT_OPS for name in node.input}
    out = []
    for init in model.graph.initializer:
        if init.name in consumed and init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 1:
            out.append((init.name, numpy_helper.to_array(init)))
    return out


def weights_from_graph(model: nn.Module, artifact: Artifact, skip: set[str]) -> dict[str, torch.Tensor]:
    """Values for every floating-point ``state_dict`` entry of ``model`` not in ``skip``, taken from the
    artifact's ``infer.onnx`` initializers by shape in declaration order (transposed 2-D weights allowed)."""
    pool = _graph_weights(artifact.graph_path("infer"))
    used: set[int] = set()
    values: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in skip or not tensor.is_floating_point():
            continue
        shape = tuple(tensor.shape)
        for i, (_, array) in enumerate(pool):
            if i in used:
                continue
            if array.shape == shape:
                values[name] = torch.from_numpy(array.copy())
            elif array.ndim == 2 and array.shape[::-1] == shape:
                values[name] = torch.from_numpy(array.T.copy())
            else:
                continue
            used.add(i)
            break
        else:
            raise ArtifactError(
                f"{artifact.path}: infer.onnx has no weight of shape {list(shape)} for {name!r}; the student SPEC "
                "does not match this artifact (pass the model's full weights with --student-weights FILE.safetensors)"
            )
    return values


def _load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"--student-weights {path}: no such file (a safetensors state_dict of the edge model)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ConfigError(f"--student-weights {path}: not a readable safetensors file ({exc})") from exc


def artifact_logits(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    """Logits of the artifact's ``infer.onnx`` with its source parameters, eval-mode BN (``bn_alpha`` 0)."""
    import onnxruntime as ort

    from edgetta.engines.feed import DataInputs

    session = ort.InferenceSession(str(artifact.graph_path("infer")), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = DataInputs.of(artifact).feed(x, bn_alpha=0.0)
    feed.update({k: v for k, v in artifact.params.items() if k in wanted})
    return session.run([artifact.output_name("logits")], {k: v for k, v in feed.items() if k in wanted})[0]


def check_parity(model: nn.Module, artifact: Artifact, batch: int = 4, seed: int = 0) -> float:
    """Max |logit difference| between ``model`` (eval mode) and ``infer.onnx`` on a random probe batch;
    raises :class:`ArtifactError` when it exceeds :data:`PARITY_TOLERANCE` of the logit scale."""
    shape = (batch, *(d for d in artifact.input_shape[1:]))
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected = artifact_logits(artifact, x)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    model.train(was_training)
    if got.shape != expected.shape:
        raise ArtifactError(f"student SPEC gives logits {list(got.shape)}, the artifact {list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected)))
    if diff > PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
        raise ArtifactError(
            f"the student model differs from {artifact.path}/infer.onnx (max logit difference {diff:.3g}): "
            "check --student SPEC, or give the model's full weights with --student-weights FILE.safetensors"
        )
    return diff


def build_student(
    spec_model: nn.Module, artifact: Artifact, weights: str | Path | Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """The edge model in torch: ``spec_model`` with the artifact's weights (or ``weights``, a full state_dict
    file or mapping, with the artifact's norm tensors on top), verified against ``infer.onnx``."""
    norm = {k: torch.from_numpy(v.copy()) for k, v in _norm_tensors(artifact).items()}
    state = spec_model.state_dict()
    missing = sorted(set(norm) - set(state))
    if missing:
        raise ArtifactError(
            f"the student SPEC has no tensors named {missing[:4]} that {artifact.path} adapts: the SPEC does not "
            "build the exported model"
        )
    if weights is None:
        full = weights_from_graph(spec_model, artifact, skip=set(norm))
    else:
        full = dict(_load_weights_file(weights) if isinstance(weights, (str, Path)) else weights)
    full.update(norm)
    try:
        result = spec_model.load_state_dict(full, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ArtifactError(f"the student weights do not fit the student SPEC: {exc}") from exc
    unfilled = [k for k in result.missing_keys if state[k].is_floating_point()]
    if unfilled:
        raise ArtifactError(f"student weights lack {unfilled[:4]}: give a full state_dict with --student-weights")
    check_parity(spec_model, artifact)
    return spec_model
