"""``NormLayer``: one normalization layer of an exported model and the graph names of its tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from edgetta.contract.names import NORM_KINDS, batch_stat_names, grad_name
from edgetta.errors import ArtifactError

_NAME_FIELDS = ("weight", "bias", "running_mean", "running_var", "batch_mean", "batch_var", "weight_grad", "bias_grad")


@dataclass(frozen=True)
class NormLayer:
    """A row of the manifest's norm-layer table.

    ``weight``/``bias``: graph inputs of the affine parameters (None when the layer has none);
    ``running_mean``/``running_var``: graph inputs of BN running statistics; ``batch_mean``/``batch_var``:
    graph outputs of a BatchNorm layer's batch statistics; ``weight_grad``/``bias_grad``: adapt-graph outputs
    of the gradients, present only when the layer is ``trainable``.
    """

    module: str
    kind: str
    features: int
    trainable: bool
    weight: str | None = None
    bias: str | None = None
    running_mean: str | None = None
    running_var: str | None = None
    batch_mean: str | None = None
    batch_var: str | None = None
    weight_grad: str | None = None
    bias_grad: str | None = None

    @classmethod
    def declare(
        cls,
        module: str,
        kind: str,
        features: int,
        trainable: bool,
        *,
        weight: str | None,
        bias: str | None,
        running_mean: str | None,
        running_var: str | None,
    ) -> NormLayer:
        """A layer whose batch-statistic and gradient names follow the contract's naming rules."""
        batch_mean, batch_var = batch_stat_names(module) if kind == "batchnorm" else (None, None)
        return cls(
            module=module,
            kind=kind,
            features=features,
            trainable=trainable,
            weight=weight,
            bias=bias,
            running_mean=running_mean,
            running_var=running_var,
            batch_mean=batch_mean,
            batch_var=batch_var,
            weight_grad=grad_name(weight) if trainable and weight else None,
            bias_grad=grad_name(bias) if trainable and bias else None,
        )

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> NormLayer:
        """Parse one manifest row; missing graph names read as None, a malformed row is an ArtifactError."""
        try:
            module, kind, features, trainable = row["module"], row["kind"], row["features"], row["trainable"]
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"norm-layer row {row!r} lacks {exc}; the manifest is damaged, re-export") from exc
        if kind not in NORM_KINDS:
            raise ArtifactError(f"norm layer {module!r} has kind {kind!r}; expected one of {', '.join(NORM_KINDS)}")
        names = {name: row.get(name) for name in _NAME_FIELDS}
        bad = [name for name, value in names.items() if value is not None and not isinstance(value, str)]
        if bad or not isinstance(features, int) or not isinstance(trainable, bool):
            raise ArtifactError(f"norm layer {module!r} has malformed entries; the manifest is damaged, re-export")
        return cls(module=module, kind=kind, features=features, trainable=trainable, **names)

    def to_json(self) -> dict[str, Any]:
        """The manifest row (every field, in declaration order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def trainable_inputs(self) -> tuple[str, ...]:
        """The graph inputs adaptation may change (affine parameters of a trainable layer)."""
        if not self.trainable:
            return ()
        return tuple(name for name in (self.weight, self.bias) if name is not None)

    @property
    def gradients(self) -> tuple[tuple[str, str], ...]:
        """(parameter input, gradient output) pairs of a trainable layer."""
        if not self.trainable:
            return ()
        pairs = ((self.weight, self.weight_grad), (self.bias, self.bias_grad))
        return tuple((param, grad) for param, grad in pairs if param and grad)
