"""The daemon's config (``edgetta run CONFIG.yaml``): parsed and validated once into typed objects.

Every problem is a :class:`ConfigError` naming the full key path (``streams[0].output.format``) and the
allowed values. Relative paths (``artifact``, ``state_dir``, ``output.path``, a source's ``path``) are
resolved against the directory of the config file, so a deployment folder can be moved as a whole.

    artifact: bundled:fmnist_resnet_bn     # or a directory
    adapt: {preset: safe_tent}             # the replay-config schema (edgetta.runtime.config.build_config)
    state_dir: state
    checkpoint: {every_items: 512, every_seconds: 60}
    metrics: {host: 127.0.0.1, port: 9108} # omit to disable
    log: {format: json, level: info}
    streams:
      - name: cam0
        source: {kind: npz, path: stream.npz}
        output: {path: out/cam0.jsonl}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgetta.errors import ConfigError
from edgetta.runtime.config import TOP_LEVEL_KEYS as ADAPT_KEYS
from edgetta.runtime.config import RuntimeConfig, build_config, merge
from edgetta.safety.registry import RAILS

BUNDLED = "bundled:"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
OUTPUT_FORMATS = ("jsonl", "csv", "stdout")
QUEUE_POLICIES = ("auto", "block", "drop_oldest")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

TOP_KEYS = ("artifact", "adapt", "state_dir", "checkpoint", "metrics", "log", "health", "streams", "sync")
STREAM_KEYS = ("name", "artifact", "adapt", "source", "preprocess", "output", "queue", "flush_after")


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint a stream after ``every_items`` items or ``every_seconds`` seconds, whichever comes first."""

    every_items: int = 512
    every_seconds: float = 60.0


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus ``/metrics`` and ``/healthz`` on ``host:port`` (port 0: any free port, logged)."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class LogConfig:
    """Structured logs: one JSON object per line (or plain text) on stderr, or in ``file``."""

    format: str = "json"
    level: str = "info"
    file: Path | None = None


@dataclass(frozen=True)
class HealthConfig:
    """When ``/healthz`` turns unhealthy: a running stream without an item for ``stall_seconds``, or
    ``collapse_resets`` collapse-guard resets of one stream within ``collapse_window_seconds``."""

    stall_seconds: float = 60.0
    collapse_resets: int = 3
    collapse_window_seconds: float = 600.0


@dataclass(frozen=True)
class OutputConfig:
    """Where a stream's records go. ``events``: optional JSON-lines file of the stream's rail events."""

    path: Path | None = None
    format: str = "jsonl"
    probabilities: bool = False
    events: Path | None = None


@dataclass(frozen=True)
class QueueConfig:
    """The bounded queue between a stream's reader thread and the model. ``auto``: live sources drop
    the oldest item when full, recorded sources block (never drop)."""

    size: int = 256
    policy: str = "auto"


@dataclass(frozen=True)
class StreamConfig:
    """One stream: its source, preprocessing, adaptation config, output and queue."""

    name: str
    artifact: Path
    adapt: RuntimeConfig
    adapt_spec: dict[str, Any]
    source: dict[str, Any]
    preprocess: dict[str, Any]
    output: OutputConfig
    queue: QueueConfig
    flush_after: float | None = None
    index: int = 0

    @property
    def where(self) -> str:
        return f"streams[{self.index}]"

    def settings(self) -> dict[str, Any]:
        """What a checkpoint of this stream depends on (a resume with other values is refused)."""
        adapt = asdict(self.adapt)
        adapt.pop("engine", None)
        return json.loads(
            json.dumps(
                {
                    "adapt": adapt,
                    "source": self.source,
                    "preprocess": self.preprocess,
                    "output": {"path": str(self.output.path), "format": self.output.format},
                },
                default=str,
                sort_keys=True,
            )
        )


@dataclass(frozen=True)
class DaemonConfig:
    """The whole deployment: shared defaults and one entry per stream."""

    state_dir: Path
    streams: tuple[StreamConfig, ...]
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    sync: Any = None  # edgetta.sync.config.SyncConfig when the config has a sync block (docs/sync.md)


# -- small checks --------------------------------------------------------------------------------------------
def _mapping(value: Any, where: str, example: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, e.g. {example}; got {value!r}")
    return value


def _keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            at = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{at}: unknown key; valid keys: {', '.join(allowed)}")


def _int(value: Any, where: str, minimum: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def _seconds(value: Any, where: str, default: float | None, allow_none: bool = False) -> float | None:
    if value is None:
        if allow_none:
            return None
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: must be a number of seconds > 0, got {value!r}")
    return float(value)


def _choice(value: Any, where: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _bool(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    return value


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a path (relative paths are relative to the config file), got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def bundled_artifacts() -> list[str]:
    """Names usable as ``bundled:<name>``."""
    root = resources.files("edgetta.assets")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())


def resolve_artifact(value: Any, where: str, base: Path) -> Path:
    """A directory holding ``manifest.json``: ``bundled:<name>`` or a path."""
    if isinstance(value, str) and value.startswith(BUNDLED):
        name = value[len(BUNDLED) :]
        if name not in bundled_artifacts():
            raise ConfigError(f"{where}: no bundled artifact {name!r}; bundled: {', '.join(bundled_artifacts())}")
        return Path(str(resources.files("edgetta.assets") / name))
    path = _path(value, where, base)
    if not (path / "manifest.json").is_file():
        raise ConfigError(
            f"{where}: {path} is not an artifact directory (no manifest.json); give the directory written by "
            f"edgetta export, or bundled:<name> ({', '.join(bundled_artifacts())})"
        )
    return path


def _adapt(spec: dict[str, Any], where: str) -> RuntimeConfig:
    """The replay-config schema, with errors re-labelled under ``where`` (e.g. ``adapt.method_args.lr``)."""
    _keys(spec, tuple(sorted(ADAPT_KEYS)), where)
    try:
        return build_config(dict(spec))
    except ConfigError as exc:
        message = str(exc)
        head = re.match(r"^([a-z_]+)([.:\[ ])", message)
        if head and head.group(1) in ADAPT_KEYS:
            raise ConfigError(f"{where}.{message}") from None
        if "rail" in message or (head and head.group(1) in RAILS):
            raise ConfigError(f"{where}.rails: {message}") from None
        raise ConfigError(f"{where}: {message}") from None


# -- sections ------------------------------------------------------------------------------------------------
def _checkpoint(data: Any) -> CheckpointConfig:
    spec = _mapping(data, "checkpoint", "{every_items: 512, every_seconds: 60}")
    _keys(spec, ("every_items", "every_seconds"), "checkpoint")
    default = CheckpointConfig()
    return CheckpointConfig(
        every_items=_int(spec.get("every_items"), "checkpoint.every_items", 1, default.every_items),
        every_seconds=float(_seconds(spec.get("every_seconds"), "checkpoint.every_seconds", default.every_seconds)),
    )


def _metrics(data: Any) -> MetricsConfig | None:
    if data is None or data is False:
        return None
    spec = _mapping(data, "metrics", "{host: 127.0.0.1, port: 9108}")
    _keys(spec, ("host", "port"), "metrics")
    host = spec.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"metrics.host: must be a host name or address, e.g. 127.0.0.1; got {host!r}")
    port = spec.get("port", 9108)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics.port: must be an integer 0..65535 (0: any free port), got {port!r}")
    return MetricsConfig(host=host, port=port)


def _log(data: Any, state_dir: Path) -> LogConfig:
    spec = _mapping(data, "log", "{format: json, level: info}")
    _keys(spec, ("format", "level", "file"), "log")
    level = spec.get("level")
    if isinstance(level, str):
        level = level.lower()
    file = spec.get("file")
    return LogConfig(
        format=_choice(spec.get("format"), "log.format", LOG_FORMATS, "json"),
        level=_choice(level, "log.level", LOG_LEVELS, "info"),
        file=None if file is None else _path(file, "log.file (relative to state_dir)", state_dir),
    )


def _health(data: Any) -> HealthConfig:
    spec = _mapping(data, "health", "{stall_seconds: 60, collapse_resets: 3}")
    _keys(spec, ("stall_seconds", "collapse_resets", "collapse_window_seconds"), "health")
    d = HealthConfig()
    return HealthConfig(
        stall_seconds=float(_seconds(spec.get("stall_seconds"), "health.stall_seconds", d.stall_seconds)),
        collapse_resets=_int(spec.get("collapse_resets"), "health.collapse_resets", 1, d.collapse_resets),
        collapse_window_seconds=float(
            _seconds(spec.get("collapse_window_seconds"), "health.collapse_window_seconds", d.collapse_window_seconds)
        ),
    )


def _output(data: Any, where: str, base: Path) -> OutputConfig:
    if data is None:
        raise ConfigError(f"{where}: missing; e.g. {{path: out/cam0.jsonl}} (or {{format: stdout}})")
    spec = _mapping(data, where, "{path: out/cam0.jsonl}")
    _keys(spec, ("path", "format", "probabilities", "events"), where)
    path = spec.get("path")
    fmt = spec.get("format")
    if fmt is None:
        fmt = "csv" if str(path).lower().endswith(".csv") else "jsonl"
    fmt = _choice(fmt, f"{where}.format", OUTPUT_FORMATS, "jsonl")
    if fmt == "stdout":
        if path is not None:
            raise ConfigError(f"{where}.path: format stdout takes no path; remove path or choose jsonl or csv")
        resolved = None
    else:
        if path is None:
            raise ConfigError(f"{where}.path: missing; give a file for the records (e.g. out/cam0.jsonl)")
        resolved = _path(path, f"{where}.path", base)
    events = spec.get("events")
    return OutputConfig(
        path=resolved,
        format=fmt,
        probabilities=_bool(spec.get("probabilities"), f"{where}.probabilities", False),
        events=None if events is None else _path(events, f"{where}.events", base),
    )


def _queue(data: Any, where: str) -> QueueConfig:
    spec = _mapping(data, where, "{size: 256, policy: auto}")
    _keys(spec, ("size", "policy"), where)
    return QueueConfig(
        size=_int(spec.get("size"), f"{where}.size", 1, QueueConfig.size),
        policy=_choice(spec.get("policy"), f"{where}.policy", QUEUE_POLICIES, "auto"),
    )


def _stream(data: Any, i: int, top: dict[str, Any], base: Path) -> StreamConfig:
    where = f"streams[{i}]"
    spec = _mapping(data, where, "{name: cam0, source: {kind: video, path: clip.mp4}, output: {path: out.jsonl}}")
    _keys(spec, STREAM_KEYS, where)
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{where}.name: must be 1-64 letters, digits, '_', '.' or '-' (it names files and metric labels), "
            f"got {name!r}"
        )
    artifact_value = spec.get("artifact", top.get("artifact"))
    if artifact_value is None:
        raise ConfigError(f"artifact: missing; give an artifact directory or bundled:<name> (at the top or in {where})")
    artifact_where = f"{where}.artifact" if "artifact" in spec else "artifact"
    artifact = resolve_artifact(artifact_value, artifact_where, base)
    top_adapt = _mapping(top.get("adapt"), "adapt", "{preset: safe_tent}")
    own_adapt = _mapping(spec.get("adapt"), f"{where}.adapt", "{preset: safe_tent}")
    if not top_adapt and not own_adapt:
        raise ConfigError(
            "adapt: missing; say what to run, e.g. adapt: {preset: safe_tent} (presets and methods as "
            "in replay configs)"
        )
    if own_adapt:
        _keys(own_adapt, tuple(sorted(ADAPT_KEYS)), f"{where}.adapt")
    adapt_spec = merge(top_adapt, own_adapt)
    if "method" in own_adapt or "preset" in own_adapt:  # a stream choosing another method starts from it
        adapt_spec = dict(own_adapt)
    adapt = _adapt(adapt_spec, f"{where}.adapt" if own_adapt else "adapt")

    from edgetta.daemon.sources import check_preprocess, check_source_spec, is_live_kind

    source = check_source_spec(spec.get("source"), f"{where}.source", base)
    preprocess = _mapping(spec.get("preprocess"), f"{where}.preprocess", "{resize: [28, 28], color: gray}")
    check_preprocess(source, preprocess, f"{where}.preprocess")
    queue = _queue(spec.get("queue"), f"{where}.queue")
    if queue.policy == "drop_oldest" and not is_live_kind(source):
        raise ConfigError(
            f"{where}.queue.policy: drop_oldest would lose items of a recorded {source['kind']} source; "
            "use block or auto"
        )
    flush_after = _seconds(spec.get("flush_after"), f"{where}.flush_after", None, allow_none=True)
    return StreamConfig(
        name=name,
        artifact=artifact,
        adapt=adapt,
        adapt_spec=adapt_spec,
        source=source,
        preprocess=dict(preprocess),
        output=_output(spec.get("output"), f"{where}.output", base),
        queue=queue,
        flush_after=flush_after,
        index=i,
    )


def build_daemon_config(data: Any, base: Path | str = ".", path: Path | None = None) -> DaemonConfig:
    """A validated :class:`DaemonConfig` from a parsed YAML mapping; relative paths resolve against ``base``."""
    base = Path(base).resolve()
    if not isinstance(data, dict):
        raise ConfigError(f"the daemon config must be a mapping with keys {', '.join(TOP_KEYS)}; got {data!r}")
    _keys(data, TOP_KEYS, "")
    if data.get("state_dir") is None:
        raise ConfigError("state_dir: missing; give a directory for checkpoints and logs (e.g. state/cam0)")
    state_dir = _path(data["state_dir"], "state_dir", base)
    streams = data.get("streams")
    if not isinstance(streams, list) or not streams:
        raise ConfigError(
            "streams: must be a non-empty list of streams, e.g. [{name: cam0, source: {...}, output: ...}]"
        )
    built = tuple(_stream(s, i, data, base) for i, s in enumerate(streams))
    seen: dict[str, int] = {}
    outputs: dict[Path, int] = {}
    for s in built:
        if s.name in seen:
            raise ConfigError(f"{s.where}.name: {s.name!r} is already the name of streams[{seen[s.name]}]")
        seen[s.name] = s.index
        for key, target in (("path", s.output.path), ("events", s.output.events)):
            if target is None:
                continue
            if target in outputs:
                raise ConfigError(f"{s.where}.output.{key}: {target} is written by streams[{outputs[target]}] too")
            outputs[target] = s.index
    sync = None
    if data.get("sync") is not None:
        from edgetta.sync.config import build_sync_config

        sync = build_sync_config(data["sync"], base, [s.name for s in built])
    return DaemonConfig(
        state_dir=state_dir,
        streams=built,
        sync=sync,
        checkpoint=_checkpoint(data.get("checkpoint")),
        metrics=_metrics(data.get("metrics")),
        log=_log(data.get("log"), state_dir),
        health=_health(data.get("health")),
        path=path,
        raw=data,
    )


def load_daemon_config(path: str | Path) -> DaemonConfig:
    """Read and validate the YAML file at ``path``."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"config {file} is a directory; pass the YAML file")
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    return build_daemon_config(data, file.resolve().parent, path=file.resolve())


# Keys a SIGHUP may change while streams run; any other change is refused (restart the daemon for it).
# metrics: its address may change; turning metrics on or off needs a restart.
RELOADABLE = ("log", "checkpoint", "health", "metrics")


def reload_diff(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """Top-level keys (and stream entries) that changed and cannot be applied while running; [] = safe."""
    unsafe: list[str] = []
    for key in TOP_KEYS:
        if key in RELOADABLE or key == "streams":
            continue
        if old.raw.get(key) != new.raw.get(key):
            unsafe.append(key)
    if (old.metrics is None) != (new.metrics is None):
        unsafe.append("metrics (turned on or off)")
    old_streams, new_streams = old.raw.get("streams") or [], new.raw.get("streams") or []
    if len(old_streams) != len(new_streams):
        unsafe.append("streams (added or removed)")
    else:
        for i, (a, b) in enumerate(zip(old_streams, new_streams)):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    unsafe.append(f"streams[{i}].{key}")
    return unsafe
