"""Runtime configuration: parsed and validated once, at the edge of the program, into a small typed
object. A YAML file may start from a bundled preset (``preset: eata``) and override any key."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgetta.errors import ConfigError
from edgetta.runtime.engine import EngineOptions

TOP_LEVEL_KEYS = {
    "preset",
    "method",
    "method_args",
    "rails",
    "batch_size",
    "window",
    "episodic",
    "engine",
    "seed",
    "checkpoint",
}
ENGINE_KEYS = set(EngineOptions.__dataclass_fields__)


@dataclass
class RuntimeConfig:
    method: str = "frozen"
    method_args: dict[str, Any] = field(default_factory=dict)
    rails: list[Any] = field(default_factory=list)
    batch_size: int = 64
    window: int = 16
    episodic: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    seed: int = 0
    checkpoint: dict[str, Any] = field(default_factory=dict)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("edgetta.configs").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    path = resources.files("edgetta.configs") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; bundled presets: {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text()) or {}


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys (method, rails, ...), got {type(data).__name__}"
        )
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (method_args, engine); everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def build_config(data: dict[str, Any]) -> RuntimeConfig:
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    if "preset" in data:
        data = merge(load_preset(str(data["preset"])), {k: v for k, v in data.items() if k != "preset"})
    if data.get("method") is None:
        raise ConfigError("method: missing; set method (frozen, bn, lame, tent, eata, sar) or preset")
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        raise ConfigError("engine: must be a mapping, e.g. {providers: auto, intra_op_threads: 2}")
    bad_engine = set(engine) - ENGINE_KEYS
    if bad_engine:
        raise ConfigError(f"engine.{sorted(bad_engine)[0]}: unknown key; valid: {', '.join(sorted(ENGINE_KEYS))}")
    method_args = data.get("method_args") or {}
    if not isinstance(method_args, dict):
        raise ConfigError("method_args: must be a mapping of argument names to values")
    rails = data.get("rails") or []
    if not isinstance(rails, list):
        raise ConfigError("rails: must be a list of rail names or {name: ..., args} mappings")
    for key in ("batch_size", "window", "seed"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0):
            raise ConfigError(f"{key}: must be a non-negative integer, got {data[key]!r}")
    if data.get("batch_size", 64) == 0:
        raise ConfigError("batch_size: must be >= 1")
    return RuntimeConfig(
        method=str(data["method"]),
        method_args=dict(method_args),
        rails=list(rails),
        batch_size=int(data.get("batch_size", 64)),
        window=int(data.get("window", 16)),
        episodic=bool(data.get("episodic", False)),
        engine=EngineOptions(**engine),
        seed=int(data.get("seed", 0)),
        checkpoint=dict(data.get("checkpoint") or {}),
    )


def load_config(path: str | Path | None = None, method: str | None = None, **overrides: Any) -> RuntimeConfig:
    """Config from (in increasing priority) the preset named by ``method``, the YAML file, overrides."""
    data: dict[str, Any] = {}
    if method:
        data = load_preset(method) if method in preset_names() else {"method": method}
    if path:
        file_data = _read_yaml(path)
        if "preset" in file_data:
            file_data = merge(load_preset(str(file_data.pop("preset"))), file_data)
        data = merge(data, file_data)
    data = merge(data, {k: v for k, v in overrides.items() if v is not None})
    return build_config(data)
