"""Plain-op replacements for torch normalization layers.

The dynamo ONNX exporter drops BatchNorm's training mode and TensorRT rejects training-mode
BatchNormalization, so every norm layer is rewritten into reductions and elementwise ops whose
affine parameters and running statistics are ordinary tensors (graph inputs after export).
BatchNorm blends statistics: mean = a*batch_mean + (1-a)*running_mean (same for the biased
variance), a = ``bn_alpha``; a = 0 is eval-mode BN, a = 1 is train-mode BN (Ioffe & Szegedy, 2015).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgetta.errors import ExportError

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass
class TraceContext:
    """Values shared by the plain norm modules during one forward: the BN blend factor going in,
    per-BN batch statistics and the classifier's input features coming out."""

    bn_alpha: torch.Tensor | None = None
    batch_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    features: torch.Tensor | None = None

    def reset(self, bn_alpha: torch.Tensor) -> None:
        self.bn_alpha = bn_alpha
        self.batch_stats = {}
        self.features = None


def norm_kind(module: nn.Module) -> str | None:
    if isinstance(module, _BATCHNORM):
        return "batchnorm"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    if isinstance(module, _INSTANCENORM):
        return "instancenorm"
    return None


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((1, -1) + (1,) * (ndim - 2))


class _PlainNorm(nn.Module):
    kind = ""

    def __init__(self, source: nn.Module, path: str, ctx: TraceContext) -> None:
        super().__init__()
        self.path = path
        self.ctx = ctx
        self.eps = float(source.eps)
        weight = getattr(source, "weight", None)
        bias = getattr(source, "bias", None)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def features(self) -> int:
        raise NotImplementedError

    def _affine(self, y: torch.Tensor, view) -> torch.Tensor:
        if self.weight is not None:
            y = y * view(self.weight)
        if self.bias is not None:
            y = y + view(self.bias)
        return y


class PlainBatchNorm(_PlainNorm):
    kind = "batchnorm"

    def __init__(self, source: nn.Module, path: str, ctx: TraceContext) -> None:
        super().__init__(source, path, ctx)
        self.num_features = int(source.num_features)
        if source.track_running_stats and source.running_mean is not None:
            self.register_buffer("running_mean", source.running_mean.detach().clone().float())
            self.register_buffer("running_var", source.running_var.detach().clone().float())
        else:
            self.running_mean = None
            self.running_var = None

    @property
    def features(self) -> int:
        return self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        batch_mean = x.mean(dim=dims)
        centered = x - _channel_view(batch_mean, x.dim())
        batch_var = (centered * centered).mean(dim=dims)
        self.ctx.batch_stats[self.path] = (batch_mean, batch_var)
        if self.running_mean is None:
            mean, var = batch_mean, batch_var
        else:
            alpha = self.ctx.bn_alpha
            mean = alpha * batch_mean + (1.0 - alpha) * self.running_mean
            var = alpha * batch_var + (1.0 - alpha) * self.running_var
        y = (x - _channel_view(mean, x.dim())) * _channel_view(torch.rsqrt(var + self.eps), x.dim())
        return self._affine(y, lambda t: _channel_view(t, x.dim()))


class PlainLayerNorm(_PlainNorm):
    kind = "layernorm"

    def __init__(self, source: nn.LayerNorm, path: str, ctx: TraceContext) -> None:
        super().__init__(source, path, ctx)
        self.normalized_shape = tuple(source.normalized_shape)

    @property
    def features(self) -> int:
        n = 1
        for s in self.normalized_shape:
            n *= s
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(x.dim() - len(self.normalized_shape), x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=dims, keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        return self._affine(y, lambda t: t)


class PlainGroupNorm(_PlainNorm):
    kind = "groupnorm"

    def __init__(self, source: nn.Module, path: str, ctx: TraceContext, groups: int | None = None) -> None:
        super().__init__(source, path, ctx)
        self.num_channels = int(getattr(source, "num_channels", 0) or source.num_features)
        self.groups = int(groups if groups is not None else source.num_groups)

    @property
    def features(self) -> int:
        return self.num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.groups, -1)
        mean = grouped.mean(dim=2, keepdim=True)
        centered = grouped - mean
        var = (centered * centered).mean(dim=2, keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return self._affine(y, lambda t: _channel_view(t, x.dim()))


class PlainInstanceNorm(PlainGroupNorm):
    """InstanceNorm = GroupNorm with one group per channel (instance statistics only)."""

    kind = "instancenorm"

    def __init__(self, source: nn.Module, path: str, ctx: TraceContext) -> None:
        if source.track_running_stats:
            raise ExportError(
                f"norm layer '{path}' ({type(source).__name__}) tracks running statistics; edgetta supports "
                "InstanceNorm with instance statistics only (track_running_stats=False)"
            )
        super().__init__(source, path, ctx, groups=int(source.num_features))
        self.num_channels = int(source.num_features)


_PLAIN = {
    "batchnorm": PlainBatchNorm,
    "layernorm": PlainLayerNorm,
    "groupnorm": PlainGroupNorm,
    "instancenorm": PlainInstanceNorm,
}


class FeatureTap(nn.Module):
    """Wraps the final classifier and records its (flattened) input as the model's features."""

    def __init__(self, classifier: nn.Module, ctx: TraceContext) -> None:
        super().__init__()
        self.classifier = classifier
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ctx.features = x.reshape(x.shape[0], -1)
        return self.classifier(x)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def rewrite_norms(model: nn.Module, ctx: TraceContext, classifier: str | None) -> dict[str, _PlainNorm]:
    """Replace every norm layer of ``model`` in place by its plain-op twin; wrap ``classifier``.

    Returns the plain modules keyed by their path in the original model's named_modules().
    """
    plain: dict[str, _PlainNorm] = {}
    for path, module in list(model.named_modules()):
        kind = norm_kind(module)
        if kind is None or not path:
            continue
        replacement = _PLAIN[kind](module, path, ctx)
        _set_submodule(model, path, replacement)
        plain[path] = replacement
    if classifier:
        _set_submodule(model, classifier, FeatureTap(model.get_submodule(classifier), ctx))
    return plain
