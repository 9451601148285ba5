"""Runtime configuration: parsed and validated once, at the edge of the program, into a small typed
object. A YAML file may start from a bundled preset (``preset: eata``) and override any key.

``RuntimeConfig(...)`` validates itself, so a config built in code and one loaded from YAML go through
the same checks and get the same defaults: the method's own (published) defaults, no rails unless
listed. Presets (``edgetta/configs/*.yaml``) are named recipes on top: a method, its arguments and rails.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgetta.configs import preset_names
from edgetta.engines import EngineOptions
from edgetta.errors import ConfigError
from edgetta.runtime.methods import METHODS, Method
from edgetta.safety import RailPipeline, build_rails

ENGINE_KEYS = {f.name for f in fields(EngineOptions)}
# Names that meant something else in earlier versions, and what to write now.
RENAMED_ARGS = {
    "alpha": "bn_alpha (the blend of batch and running statistics)",
    "window": "the top-level key window (the Adapter decides when to use it)",
}


@dataclass(frozen=True)
class RuntimeConfig:
    """What the Adapter runs: a method with its arguments, rails, and how calls are batched.

    ``batch_size``: how loops (replay, demo, daemon) group a stream. ``min_batch``: a call with fewer rows
    than this, on a method whose predictions depend on the batch (test-batch BN statistics, LAME), goes
    through a sliding window of the last ``window`` rows (``None``: ``batch_size``), whatever size the
    caller chose. ``name``: the recipe label in reports (the preset name, else the method).
    """

    method: str = "frozen"
    method_args: dict[str, Any] = field(default_factory=dict)
    rails: list[Any] = field(default_factory=list)
    batch_size: int = 64
    window: int | None = None
    min_batch: int = 16
    episodic: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ConfigError(f"method: unknown method {self.method!r}; {valid_names()}")
        if not isinstance(self.method_args, dict):
            raise ConfigError("method_args: must be a mapping of argument names to values")
        if not isinstance(self.rails, list):
            raise ConfigError("rails: must be a list of rail names or {name: ..., args} mappings")
        _positive_int("batch_size", self.batch_size)
        _positive_int("min_batch", self.min_batch)
        if self.window is not None:
            _positive_int("window", self.window)
        _positive_int("seed", self.seed, minimum=0)
        if not isinstance(self.episodic, bool):
            raise ConfigError(f"episodic: must be true or false, got {self.episodic!r}")
        if not isinstance(self.engine, EngineOptions):
            raise ConfigError("engine: must be engine options, e.g. {providers: auto, intra_op_threads: 2}")
        method = build_method(self.method, self.method_args)
        RailPipeline(build_rails(self.rails), method.offers(), self.method)  # refuses rails the method cannot host
        if not self.name:
            object.__setattr__(self, "name", self.method)

    @property
    def window_size(self) -> int:
        return self.window or self.batch_size


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


# -- methods ------------------------------------------------------------------------------------------
def method_arguments(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """Keyword arguments a method class accepts (its own and its base classes')."""
    params: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in klass.__dict__ and klass is not object:
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    params[name] = p
    return params


def _check_type(method: str, key: str, value: Any, param: inspect.Parameter) -> None:
    """Refuse a value whose type cannot be what the argument's default or annotation says."""
    default = param.default
    annotation = str(param.annotation)
    where = f"method_args.{key} (method {method})"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)) or (default is None and ("float" in annotation or "int" in annotation)):
        if value is None and default is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = "; YAML reads 1e-3 as a string, write 1.0e-3" if isinstance(value, str) else ""
            raise ConfigError(f"{where} must be a number, got {value!r}{hint}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} must be finite, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    elif isinstance(default, tuple) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r}")


def build_method(name: str, args: dict[str, Any]) -> Method:
    """A method instance from validated arguments; every problem is a ConfigError naming the key."""
    if name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r}; {valid_names()}")
    cls = METHODS[name]
    accepted = method_arguments(cls)
    for key, value in args.items():
        if key not in accepted:
            hint = f" (did you mean {RENAMED_ARGS[key]}?)" if key in RENAMED_ARGS else ""
            if key == "momentum" and name == "bn":
                hint = " (did you mean bn_momentum, the EMA momentum of the running statistics?)"
            raise ConfigError(
                f"method_args.{key}: not an argument of method {name}{hint}; valid: {', '.join(sorted(accepted))}"
            )
        _check_type(name, key, value, accepted[key])
    try:
        return cls(**args)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method_args for {name}: {exc}") from exc


# -- presets and YAML ---------------------------------------------------------------------------------
def valid_names() -> str:
    """The names a user may pick, for error messages."""
    return f"methods: {', '.join(METHODS)}; bundled presets: {', '.join(preset_names())}"


def load_preset(name: str) -> dict[str, Any]:
    path = resources.files("edgetta.configs") / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; {valid_names()}")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", name)
    return data


def _read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"config {path} is a directory; pass a YAML file")
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
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


TOP_LEVEL_KEYS = {f.name for f in fields(RuntimeConfig)} | {"preset"}


def _expand_preset(data: dict[str, Any]) -> dict[str, Any]:
    if "preset" not in data:
        return data
    return merge(load_preset(data["preset"]), {k: v for k, v in data.items() if k != "preset"})


def build_config(data: dict[str, Any]) -> RuntimeConfig:
    """A RuntimeConfig from a mapping (a parsed YAML file, with an optional ``preset``)."""
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    data = _expand_preset(data)
    if data.get("method") is None:
        raise ConfigError(f"method: missing; set method or preset ({valid_names()})")
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        raise ConfigError("engine: must be a mapping, e.g. {providers: auto, intra_op_threads: 2}")
    bad_engine = set(engine) - ENGINE_KEYS
    if bad_engine:
        raise ConfigError(f"engine.{sorted(bad_engine)[0]}: unknown key; valid: {', '.join(sorted(ENGINE_KEYS))}")
    values = {k: v for k, v in data.items() if k != "engine" and v is not None}
    values.setdefault("method_args", {})
    values.setdefault("rails", [])
    return RuntimeConfig(engine=EngineOptions(**engine), **values)


def load_config(path: str | Path | None = None, *, preset: str | None = None, **overrides: Any) -> RuntimeConfig:
    """A config from (in increasing priority) a bundled ``preset``, the YAML file at ``path`` and keyword
    ``overrides`` (None values are ignored). ``load_config(method="tent")`` is method tent with its own
    defaults and no rails, the same as ``RuntimeConfig(method="tent")``; ``load_config(preset="tent")`` is
    the bundled recipe."""
    data: dict[str, Any] = {"preset": preset} if preset else {}
    data = _expand_preset(data)
    if path:
        data = merge(data, _expand_preset(_read_yaml(path)))
    given = {k: v for k, v in overrides.items() if v is not None}
    if "method" in given and given["method"] != data.get("method"):
        data = {k: v for k, v in data.items() if k not in ("method_args", "name")}
    return build_config(_expand_preset(merge(data, given)))
