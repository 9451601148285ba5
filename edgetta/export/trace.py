"""Trace the inference and joint (forward + entropy backward) functions into ONNX graphs.

Route (docs/export.md): ``make_fx`` with a symbolic batch dimension over
``torch.func.grad_and_value`` of a functional call (every tensor an input so the batch dimension
stays symbolic), backward ops decomposed into forward ops (see decompositions.py), then the traced
graph is wrapped in a module whose frozen weights are buffers (ONNX initializers) and exported with
the dynamo ONNX exporter with a dynamic batch dimension.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx.utils
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call, grad_and_value
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from edgetta.contract import (
    BN_ALPHA,
    CE_WEIGHT,
    DATA_INPUT,
    ENTROPY,
    ENTROPY_WEIGHT,
    FEATURES,
    LOGITS,
    LOSS,
    SOFT_TARGET,
    SOFT_WEIGHT,
    grad_name,
)
from edgetta.errors import ExportError
from edgetta.export.decompositions import decomposition_table
from edgetta.export.prepare import PreparedModel
from edgetta.export.progress import Progress
from edgetta.export.weights import all_nodes, fold_keeping_weights

log = logging.getLogger("edgetta.export")


def entropy_and_pseudo_ce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Shannon entropy H = logsumexp(z) - sum softmax(z) z (Tent, Wang et al. 2021, Eq. 2) and
    cross-entropy against the argmax pseudo-label, logsumexp(z) - max(z) (EATA's Fisher loss, Eq. 9)."""
    lse = torch.logsumexp(logits, dim=1)
    probs = torch.softmax(logits, dim=1)
    entropy = lse - (probs * logits).sum(dim=1)
    pseudo_ce = lse - logits.amax(dim=1)
    return entropy, pseudo_ce


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_c q_c log softmax(z)_c against target probabilities q (CoTTA, Wang et al. 2022, Eq. 2)."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)


def adapt_loss(
    logits: torch.Tensor,
    entropy_weight: torch.Tensor,
    ce_weight: torch.Tensor,
    soft_target: torch.Tensor,
    soft_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapt graph's loss sum_i ew_i H_i + cw_i CE(z_i, argmax z_i) + sw_i CE(z_i, q_i), and the entropies."""
    entropy, pseudo_ce = entropy_and_pseudo_ce(logits)
    soft_ce = soft_cross_entropy(logits, soft_target)
    loss = (entropy_weight * entropy).sum() + (ce_weight * pseudo_ce).sum() + (soft_weight * soft_ce).sum()
    return loss, entropy


ADAPT_LOSS_INPUTS = [ENTROPY_WEIGHT, CE_WEIGHT, SOFT_TARGET, SOFT_WEIGHT]


class GraphSignature:
    """Names and order of a traced function's tensor inputs and outputs."""

    def __init__(self, prepared: PreparedModel, adapt: bool) -> None:
        self.prepared = prepared
        self.adapt = adapt
        self.data_inputs = [DATA_INPUT, BN_ALPHA] + (ADAPT_LOSS_INPUTS if adapt else [])
        self.param_inputs = prepared.norm_param_names + prepared.stat_names
        self.constants = prepared.constant_names
        stats = [n for layer in prepared.bn_layers for n in (layer.batch_mean, layer.batch_var)]
        self.outputs = [LOGITS] + ([FEATURES] if prepared.classifier else []) + stats
        if adapt:
            self.outputs += [ENTROPY, LOSS] + [grad_name(n) for n in prepared.trainable_names]

    @property
    def inputs(self) -> list[str]:
        return self.data_inputs + self.param_inputs


def build_function(prepared: PreparedModel, adapt: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A pure function (data inputs, graph params, constants) -> outputs in GraphSignature order."""
    sig = GraphSignature(prepared, adapt)
    model, ctx = prepared.model, prepared.ctx
    trainable = prepared.trainable_names
    n_data, n_params = len(sig.data_inputs), len(sig.param_inputs)

    def forward(x, alpha, tensors):
        ctx.reset(alpha)
        logits = functional_call(model, tensors, (x,))
        extras = [ctx.features] if prepared.classifier else []
        stats = [t for layer in prepared.bn_layers for t in ctx.batch_stats[layer.module]]
        return logits, extras, stats

    def function(*args):
        data = args[:n_data]
        tensors = dict(zip(sig.param_inputs, args[n_data : n_data + n_params]))
        tensors.update(zip(sig.constants, args[n_data + n_params :]))
        if not adapt:
            logits, extras, stats = forward(data[0], data[1], tensors)
            return (logits, *extras, *stats)
        x, alpha, entropy_weight, ce_weight, soft_target, soft_weight = data
        fixed = {k: v for k, v in tensors.items() if k not in trainable}

        def loss_fn(params):
            logits, extras, stats = forward(x, alpha, {**fixed, **params})
            loss, entropy = adapt_loss(logits, entropy_weight, ce_weight, soft_target, soft_weight)
            return loss, (logits, extras, stats, entropy)

        grads, (loss, (logits, extras, stats, entropy)) = grad_and_value(loss_fn, has_aux=True)(
            {k: tensors[k] for k in trainable}
        )
        return (logits, *extras, *stats, entropy, loss, *[grads[k] for k in trainable])

    return function


@contextlib.contextmanager
def _tracing_settings():
    """Math attention (flash-attention backward has no decomposition) and no MHA fast path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def example_args(prepared: PreparedModel, sig: GraphSignature, x: torch.Tensor) -> list[torch.Tensor]:
    batch = x.shape[0]
    data = [x, torch.tensor(1.0)]
    if sig.adapt:
        soft_target = torch.full((batch, prepared.num_classes), 1.0 / prepared.num_classes)
        data += [torch.full((batch,), 1.0 / batch), torch.zeros(batch), soft_target, torch.zeros(batch)]
    return data + [prepared.tensor(n) for n in sig.param_inputs]


def _fake_inputs(args: list[torch.Tensor], constants: list[torch.Tensor], batched: list[int]) -> list[torch.Tensor]:
    """Fake tensors whose batch dimension (dim 0 of ``args[i]`` for i in ``batched``) is symbolic and
    every other dimension static. Fully symbolic tracing spends minutes in sympy on reshapes."""
    mode = FakeTensorMode(shape_env=ShapeEnv())

    def fake(tensor: torch.Tensor, dynamic: bool) -> torch.Tensor:
        sizes = [DimDynamic.DYNAMIC if dynamic and i == 0 else DimDynamic.STATIC for i in range(tensor.dim())]
        return mode.from_tensor(tensor, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    return [fake(a, i in batched) for i, a in enumerate(args)] + [fake(c, False) for c in constants]


def _check_batch_stays_dynamic(fake_input: torch.Tensor) -> None:
    shape_env = fake_input.fake_mode.shape_env
    # Every non-batch dimension is static, so an equality between a symbol and a number pins the batch.
    pinned = [
        g
        for g in shape_env.guards
        if g.expr.is_Equality and g.expr.free_symbols and (g.expr.lhs.is_Number or g.expr.rhs.is_Number)
    ]
    if pinned:
        raise ExportError(
            f"an operation in the model fixes the batch size while tracing ({pinned[0].expr}), so the graphs would "
            "only run at the example's batch size. Typical cause: a functional F.linear / matmul on a 3-D input; "
            "use nn.Linear modules (edgetta rewrites those) or reshape to 2-D around the matmul."
        )


class _ExportWrapper(nn.Module):
    """Holds the traced graph and the frozen tensors as buffers, so they become ONNX initializers."""

    def __init__(self, graph_module: nn.Module, constants: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.constant_keys = list(constants)
        for i, tensor in enumerate(constants.values()):
            self.register_buffer(f"const_{i}", tensor.clone())

    def call(self, *args):
        return self.graph_module(*args, *[getattr(self, f"const_{i}") for i in range(len(self.constant_keys))])


def _wrapper_with_signature(graph_module: nn.Module, constants: dict[str, torch.Tensor], n_inputs: int) -> nn.Module:
    # torch.export needs a fixed positional signature to attach dynamic shapes to each input.
    names = [f"arg{i}" for i in range(n_inputs)]
    namespace: dict = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.call({', '.join(names)})", namespace)  # noqa: S102
    cls = type("TracedGraph", (_ExportWrapper,), {"forward": namespace["forward"]})
    return cls(graph_module, constants)


def trace_to_onnx(
    prepared: PreparedModel,
    adapt: bool,
    example: torch.Tensor,
    path: Path,
    opset: int,
    progress: Progress | None = None,
) -> None:
    """Trace one graph (infer or adapt) and write its raw ONNX translation to ``path`` (``optimise_graph``
    finishes it). Stages (reported to ``progress``): trace (make_fx, lowered to the ops the ONNX translator
    implements) and convert (torch.export of the traced graph and its ONNX translation)."""
    progress = progress or Progress(None)
    sig = GraphSignature(prepared, adapt)
    if example.shape[0] < 2:
        # A batch of 1 would be specialised away during symbolic tracing.
        example = example.expand((2,) + tuple(example.shape[1:])).contiguous()
    args = example_args(prepared, sig, example)
    constants = {n: prepared.tensor(n) for n in sig.constants}
    function = build_function(prepared, adapt)
    fake_args = _fake_inputs(args, list(constants.values()), batched=[0] + ([2, 3, 4, 5] if adapt else []))
    which = "adapt" if adapt else "infer"
    with progress.stage("trace"):
        try:
            with _tracing_settings(), fake_args[0].fake_mode:
                graph_module = make_fx(function, tracing_mode="symbolic", decomposition_table=_trace_table(opset))(
                    *fake_args
                )
        except NotImplementedError as exc:
            raise ExportError(f"cannot build the {which} graph: {exc}") from exc
        _check_batch_stays_dynamic(fake_args[0])
    wrapper = _wrapper_with_signature(graph_module, constants, len(args))
    batch = torch.export.Dim("batch", min=1)
    loss_dynamic = [{0: batch}] * len(ADAPT_LOSS_INPUTS) if adapt else []
    dynamic = [{0: batch}, None] + loss_dynamic + [None] * len(sig.param_inputs)
    with progress.stage("convert"):
        program = _convert(wrapper, tuple(args), tuple(dynamic), sig, opset, which)
        program.save(str(path))


def optimise_graph(path: Path, opset: int) -> list[str]:
    """Fold constants of the exported graph at ``path`` (weights kept once), drop the exporter's per-node
    debugging metadata (source stack traces: most of a small graph's bytes), set the IR version; return
    the ONNX op types used."""
    model = fold_constants(path)
    model.ir_version = min_ir_version(opset)
    for node in all_nodes(model.graph):
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    onnx.save(model, str(path))
    return sorted({node.op_type for node in model.graph.node})


def _trace_table(opset: int) -> dict:
    """The decompositions applied while tracing: ours for the backward ops, then torch's ONNX-friendly ones,
    so the traced graph holds only ops the ONNX translator implements and needs no second lowering pass."""
    table = {}
    try:
        from torch.onnx._internal.exporter import _decomp, _registration

        registry = _registration.ONNXRegistry.from_torchlib(opset)
        table.update(
            _decomp.create_onnx_friendly_decomposition_table(set(_decomp.get_onnx_implemented_overloads(registry)))
        )
    except Exception:  # noqa: BLE001 - a torch without these helpers: the exporter lowers the graph itself
        log.debug("ONNX-friendly decomposition table unavailable; the exporter will lower the graph", exc_info=True)
    table.update(decomposition_table())
    return table


@contextlib.contextmanager
def _without_second_lowering() -> Iterator[None]:
    """Skip the ONNX exporter's own decomposition pass (a full re-trace of the graph, a third of the export
    time) for a program whose ops were already lowered while tracing (``_trace_table``)."""
    from torch.onnx._internal.exporter import _fx_passes

    original = _fx_passes.decompose_with_registry
    _fx_passes.decompose_with_registry = lambda program, registry: program
    try:
        yield
    finally:
        _fx_passes.decompose_with_registry = original


def _convert(wrapper: nn.Module, args: tuple, dynamic: tuple, sig: GraphSignature, opset: int, which: str):
    """torch.export the traced graph and translate it to ONNX. The fast route skips the exporter's second
    lowering pass; should it fail (an op the translator lacks), the exporter's full route runs instead."""
    options = dict(input_names=sig.inputs, output_names=sig.outputs, opset_version=opset, optimize=False, verbose=False)
    try:
        with _tracing_settings():
            exported = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
            with _without_second_lowering():
                return torch.onnx.export(exported, args, dynamo=True, **options)
    except Exception:  # noqa: BLE001 - fall back to the exporter's own route, which reports errors plainly
        log.debug("fast ONNX conversion of the %s graph failed; using the full exporter route", which, exc_info=True)
    try:
        with _tracing_settings():
            return torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=dynamic, **options)
    except Exception as exc:  # the exporter raises many types; report the missing op plainly
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0] if str(exc) else "")  # no terminal colours
        raise ExportError(
            f"ONNX export of the {which} graph failed: {type(exc).__name__}: {first}. The model uses an operation "
            "edgetta cannot express in standard ONNX; see the supported layers in edgetta/export/prepare.py."
        ) from exc


def fold_constants(path: Path) -> onnx.ModelProto:
    """Constant-fold and clean the raw exporter output at ``path`` with ONNX Runtime's BASIC level, which
    only rewrites into standard ONNX ops (so the graph stays portable to TensorRT). It makes every reduction
    axis a constant; tensors computed from the weights stay ops (edgetta.export.weights), so the artifact
    holds each weight once."""
    folded = fold_keeping_weights(onnx.load(str(path)), lambda model: _ort_basic_fold(model, path))
    used = {node.domain for node in folded.graph.node}
    kept = [o for o in folded.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    return folded


def _ort_basic_fold(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    source, folded = path.with_suffix(".unfolded.onnx"), path.with_suffix(".folded.onnx")
    try:
        onnx.save(model, str(source))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))
    finally:
        source.unlink(missing_ok=True)
        folded.unlink(missing_ok=True)


def extract_infer_graph(prepared: PreparedModel, adapt_path: Path, infer_path: Path) -> list[str]:
    """Cut the inference graph out of the adapt graph: keep the forward outputs, drop everything
    only the loss and gradients need (one trace instead of two, and identical forward ops)."""
    sig = GraphSignature(prepared, adapt=False)
    extractor = onnx.utils.Extractor(onnx.load(str(adapt_path)))
    model = extractor.extract_model(sig.inputs, sig.outputs)
    source = onnx.load(str(adapt_path), load_external_data=False)
    model.ir_version = source.ir_version
    del model.opset_import[:]
    model.opset_import.extend(source.opset_import)
    # Keep the dynamic batch dimension's symbolic name on inputs and outputs.
    by_name = {v.name: v for v in list(source.graph.input) + list(source.graph.output)}
    for value in list(model.graph.input) + list(model.graph.output):
        value.CopyFrom(by_name[value.name])
    onnx.save(model, str(infer_path))
    return sorted({node.op_type for node in model.graph.node})


def min_ir_version(opset: int) -> int:
    """The oldest ONNX IR version that supports ``opset`` (widest runtime compatibility)."""
    candidates = [row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= opset]
    return min(candidates) if candidates else onnx.IR_VERSION
