"""Turn a user's torch model into a traceable form: plain-op norm layers, a feature tap on the
classifier, the table of norm layers with their graph names (edgetta.contract.NormLayer; graph-input
names are the model's state_dict keys), and checks that fail early with a message naming the module
at fault."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from edgetta.contract import NormLayer
from edgetta.errors import ExportError
from edgetta.export import decomp_prelu
from edgetta.export.attention import rewrite_attention
from edgetta.export.layers import rewrite_linear
from edgetta.export.norms import TraceContext, norm_kind, rewrite_norms

# torch.nn layer types the exporter can differentiate through (tested families, see tests/).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.Bilinear,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.MultiheadAttention,
    nn.Embedding,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    *decomp_prelu.LAYERS,
)


@dataclass
class PreparedModel:
    model: nn.Module
    ctx: TraceContext
    layers: list[NormLayer]
    classifier: str | None
    num_classes: int

    @property
    def norm_param_names(self) -> list[str]:
        return [n for layer in self.layers for n in (layer.weight, layer.bias) if n]

    @property
    def stat_names(self) -> list[str]:
        return [n for layer in self.layers for n in (layer.running_mean, layer.running_var) if n]

    @property
    def trainable_names(self) -> list[str]:
        return [n for layer in self.layers for n in layer.trainable_inputs]

    @property
    def bn_layers(self) -> list[NormLayer]:
        return [layer for layer in self.layers if layer.kind == "batchnorm"]

    @property
    def constant_names(self) -> list[str]:
        graph_inputs = set(self.norm_param_names) | set(self.stat_names)
        names = [n for n, _ in self.model.named_parameters()] + [n for n, _ in self.model.named_buffers()]
        return [n for n in names if n not in graph_inputs]

    def tensor(self, name: str) -> torch.Tensor:
        state = dict(self.model.named_parameters())
        state.update(dict(self.model.named_buffers()))
        return state[name].detach()


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def select_trainable(norm_paths: list[str], include: Sequence[str] | None, exclude: Sequence[str] | None) -> set[str]:
    """Norm layers to train: all by default, narrowed by include globs, minus exclude globs."""
    for label, patterns in (("trainable", include), ("frozen", exclude)):
        for pattern in patterns or ():
            if not any(fnmatch.fnmatchcase(p, pattern) for p in norm_paths):
                raise ExportError(
                    f"{label} glob {pattern!r} matches no norm layer; the model's norm layers are: "
                    + ", ".join(norm_paths)
                )
    chosen = {p for p in norm_paths if not include or _matches(p, include)}
    return {p for p in chosen if not exclude or not _matches(p, exclude)}


def probe(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, list[str], str | None]:
    """Run one eval forward recording the execution order of leaf modules and guessing the
    classifier: the last executed nn.Linear whose output is the model output."""
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for path, module in model.named_modules():
        if path and (not list(module.children()) or norm_kind(module) or isinstance(module, nn.MultiheadAttention)):

            def hook(mod, args, out, path=path):
                order.append(path)
                if isinstance(mod, nn.Linear):
                    outputs[path] = out

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # noqa: BLE001 - any failure here means the shape does not fit
        raise ExportError(
            f"the model does not accept an input of shape {tuple(example.shape)}: {type(exc).__name__}: {exc}. "
            "Pass the shape the model expects with --input-shape (batch first)."
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ExportError(
            f"the model must return one logits tensor of shape [batch, classes]; it returned "
            f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else ' of shape ' + str(tuple(out.shape))}"
        )
    classifier = next((p for p in reversed(order) if p in outputs and outputs[p] is out), None)
    return out, order, classifier


def check_gradient_path(model: nn.Module, order: list[str], trainable: set[str]) -> None:
    """Fail early if a torch.nn layer we cannot differentiate through runs after the first trainable norm."""
    if not trainable:
        return
    first = min(order.index(p) for p in trainable if p in order)
    modules = dict(model.named_modules())
    for path in order[first:]:
        module = modules[path]
        if type(module).__module__.startswith("torch.nn") and not isinstance(module, SUPPORTED_LAYERS):
            if list(module.children()) and not isinstance(module, nn.MultiheadAttention):
                continue
            supported = sorted({t.__name__ for t in SUPPORTED_LAYERS})
            raise ExportError(
                f"module '{path}' ({type(module).__name__}) lies on the gradient path of the trainable norm layers "
                f"and edgetta cannot differentiate through it. Supported layers: {', '.join(supported)}. "
                "Freeze the norm layers before it (--frozen GLOB) or replace the layer."
            )


def prepare_model(
    model: nn.Module,
    example: torch.Tensor,
    trainable: Sequence[str] | None = None,
    frozen: Sequence[str] | None = None,
    classifier: str | None = None,
) -> PreparedModel:
    """Copy ``model`` and rewrite it for tracing. The caller's model is left untouched."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).float().eval()
    norm_paths = [p for p, m in model.named_modules() if p and norm_kind(m)]
    if not norm_paths:
        raise ExportError(
            "the model has no normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm); "
            "edgetta adapts norm-layer parameters and statistics, so there is nothing to adapt"
        )
    trainable_paths = select_trainable(norm_paths, trainable, frozen)
    affine_trainable = [
        p
        for p in trainable_paths
        if getattr(model.get_submodule(p), "weight", None) is not None
        or getattr(model.get_submodule(p), "bias", None) is not None
    ]
    if not affine_trainable:
        raise ExportError("no trainable norm layer has affine parameters (weight/bias); check --trainable/--frozen")
    logits, order, guessed = probe(model, example)
    check_gradient_path(model, order, set(affine_trainable))
    if classifier is not None:
        try:
            model.get_submodule(classifier)
        except AttributeError as exc:
            raise ExportError(f"classifier module {classifier!r} does not exist in the model") from exc
    classifier = classifier or guessed
    ctx = TraceContext()
    rewrite_attention(model)
    rewrite_linear(model)
    plain = rewrite_norms(model, ctx, classifier)
    layers = []
    for path in norm_paths:
        module = plain[path]
        has_stats = getattr(module, "running_mean", None) is not None
        layers.append(
            NormLayer.declare(
                path,
                module.kind,
                module.features,
                path in affine_trainable,
                weight=f"{path}.weight" if module.weight is not None else None,
                bias=f"{path}.bias" if module.bias is not None else None,
                running_mean=f"{path}.running_mean" if has_stats else None,
                running_var=f"{path}.running_var" if has_stats else None,
            )
        )
    return PreparedModel(model=model, ctx=ctx, layers=layers, classifier=classifier, num_classes=int(logits.shape[1]))
