"""What image and signal preprocessing share: the skip exception, the model's input shape, and scale/mean/std.

Scale, mean and std default to what the artifact's manifest records (``artifact.preprocess``), the same
values the Adapter applies to integer input (:mod:`edgetta.runtime.inputs`): ``x * scale``, then
``(x - mean) / std`` per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.streams.spec import SpecReader


class Unusable(Exception):
    """This input cannot be prepared for the model; the message is the skip reason the source records
    (as ``Item(x=None, error=...)``). Never raised for a configuration mistake (that is a ConfigError)."""


def item_shape(artifact: Any, where: str) -> tuple[int, ...]:
    """The model's input shape without the batch dimension, from ``artifact.input_shape``."""
    shape = getattr(artifact, "input_shape", None)
    if shape is None:
        raise ConfigError(f"{where}: the artifact records no input shape; preprocessing needs the model's input size")
    dims = tuple(shape)[1:]
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(
            f"{where}: the model input {list(shape)} has a dynamic non-batch dimension; give a fixed size"
        )
    return dims


def manifest_preprocess(artifact: Any) -> dict[str, Any]:
    """The preprocessing the artifact records (``artifact.preprocess``), or {}."""
    recorded = getattr(artifact, "preprocess", None)
    return dict(recorded) if isinstance(recorded, dict) else {}


@dataclass(frozen=True)
class Normalisation:
    """``x * scale``, then ``(x - mean) / std`` over the channel axis; mean/std hold 1 or C values."""

    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def apply(self, x: np.ndarray, channel_axis: int, dtype: type = np.float32) -> np.ndarray:
        out = x.astype(dtype) * dtype(self.scale)
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        if self.mean is not None:
            out = out - np.asarray(self.mean, dtype).reshape(shape)
        if self.std is not None:
            out = out / np.asarray(self.std, dtype).reshape(shape)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


def read_normalisation(
    reader: SpecReader, recorded: dict[str, Any], channels: int, *, required: bool, hint: str
) -> Normalisation:
    """``scale``, ``mean``, ``std`` from the config, each defaulting to the manifest's value.

    With ``required`` and neither the config nor the manifest giving any of them, a ConfigError says to set
    them (``hint`` suggests values), so inputs never silently reach the model at another scale."""
    given = {k: reader.has(k) for k in ("scale", "mean", "std")}
    if required and not any(given.values()) and not any(recorded.get(k) is not None for k in given):
        raise ConfigError(
            f"{reader.where}: the artifact records no preprocessing (scale, mean, std) and none is configured; "
            f"set them here ({hint})"
        )
    scale = reader.number("scale", None, above=0.0)
    if scale is None:
        scale = _recorded_number(recorded, "scale", reader.where)
    values: dict[str, tuple[float, ...] | None] = {}
    for key in ("mean", "std"):
        listed = reader.numbers(key, None, meaning="numbers, one per channel or one for all")
        if listed is None and recorded.get(key) is not None:
            listed = _recorded_list(recorded, key, reader.where)
        if listed is not None and len(listed) not in (1, channels):
            raise reader.error(key, f"has {len(listed)} values; give 1 or {channels} (one per model channel)")
        if key == "std" and listed is not None and any(v <= 0 for v in listed):
            raise reader.error(key, f"must be > 0, got {listed}")
        values[key] = None if listed is None else tuple(float(v) for v in listed)
    return Normalisation(scale=1.0 if scale is None else scale, mean=values["mean"], std=values["std"])


def _recorded_number(recorded: dict[str, Any], key: str, where: str) -> float | None:
    value = recorded.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}.{key}: the manifest records {value!r}, not a number > 0; set {key} here")
    return float(value)


def _recorded_list(recorded: dict[str, Any], key: str, where: str) -> list[float]:
    value = recorded[key]
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"{where}.{key}: the manifest records {value!r}, not a list of numbers; set {key} here")
    return [float(v) for v in values]
