"""The daemon config: typed, validated at load, every error naming the full key path and the allowed values;
the example configs in configs/ load."""

from __future__ import annotations

import copy

import pytest
import yaml

from edgetta.cli import main
from edgetta.daemon.config import DaemonConfig, build_daemon_config, load_daemon_config, reload_diff
from edgetta.errors import ConfigError
from tests.daemon_helpers import REPO, TENT_RAILS, stream_entry, write_config

BASE = {
    "artifact": "bundled:fmnist_resnet_bn",
    "adapt": {"preset": "tent"},
    "state_dir": "state",
    "streams": [stream_entry("s0", "stream.npz", "out/s0.jsonl")],
}


def config_with(change: dict) -> dict:
    """BASE with ``change`` applied: keys like ``streams.0.output.format`` set (None deletes)."""
    data = copy.deepcopy(BASE)
    for dotted, value in change.items():
        node, parts = data, dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return data


def test_a_minimal_config_gets_the_documented_defaults_and_resolves_paths_against_the_config_file(tmp_path):
    path = tmp_path / "deploy" / "d.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(BASE))
    config = load_daemon_config(path)
    assert isinstance(config, DaemonConfig)
    assert config.state_dir == path.parent / "state"
    (s,) = config.streams
    assert s.name == "s0" and s.adapt.method == "tent" and s.adapt.name == "tent"
    assert s.source == {"kind": "npz", "path": str(path.parent / "stream.npz")}
    assert s.output.path == path.parent / "out/s0.jsonl" and s.output.format == "jsonl"
    assert s.artifact.name == "fmnist_resnet_bn" and (s.artifact / "manifest.json").is_file()
    assert (config.checkpoint.every_items, config.checkpoint.every_seconds) == (512, 60.0)
    assert config.metrics is None  # omitted = disabled
    assert (config.log.format, config.log.level) == ("json", "info")
    assert (s.queue.size, s.queue.policy) == (256, "auto")


def test_output_format_follows_the_file_suffix_and_stdout_takes_no_path(tmp_path):
    config = build_daemon_config(config_with({"streams.0.output": {"path": "o.csv"}}), tmp_path)
    assert config.streams[0].output.format == "csv"
    config = build_daemon_config(config_with({"streams.0.output": {"format": "stdout"}}), tmp_path)
    assert config.streams[0].output.path is None


def test_a_stream_may_override_adapt_and_a_method_there_replaces_the_shared_one(tmp_path):
    data = config_with({"adapt": TENT_RAILS})
    data["streams"].append(stream_entry("s1", "b.npz", "out/s1.jsonl", adapt={"batch_size": 16}))
    data["streams"].append(stream_entry("s2", "c.npz", "out/s2.jsonl", adapt={"preset": "bn_ema"}))
    s0, s1, s2 = build_daemon_config(data, tmp_path).streams
    assert s0.adapt.batch_size == 64 and s1.adapt.batch_size == 16
    assert s1.adapt.rails == s0.adapt.rails and s1.adapt.method_args == s0.adapt.method_args
    assert s2.adapt.method == "bn" and s2.adapt.rails == []


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"colour": 1}, "colour: unknown key; valid keys: artifact, adapt, state_dir"),
        ({"streams.0.colour": 1}, "streams[0].colour: unknown key; valid keys: name, artifact, adapt, source"),
        ({"streams.0.output.format": "xml"}, "streams[0].output.format: 'xml' is not one of jsonl, csv, stdout"),
        ({"streams.0.output.path": None}, "streams[0].output.path: missing"),
        ({"streams.0.output.colour": 1}, "streams[0].output.colour: unknown key; valid keys: path, format"),
        ({"streams.0.queue": {"policy": "lifo"}}, "streams[0].queue.policy: 'lifo' is not one of auto, block, drop_o"),
        ({"streams.0.queue": {"size": 0}}, "streams[0].queue.size: must be an integer >= 1, got 0"),
        ({"streams.0.queue": {"policy": "drop_oldest"}}, "streams[0].queue.policy: drop_oldest would lose items"),
        ({"streams.0.source.kind": "webcam"}, "streams[0].source.kind: 'webcam' is not one of video, camera, rtsp"),
        ({"streams.0.source.fps": 5}, "streams[0].source.fps: unknown key for kind npz; allowed here: kind, path"),
        ({"streams.0.preprocess": {"resize": 28}}, "streams[0].preprocess: npz arrays are model inputs as they are"),
        ({"streams.0.name": "cam 0"}, "streams[0].name: must be 1-64 letters, digits"),
        ({"streams.0.flush_after": -1}, "streams[0].flush_after: must be a number of seconds > 0"),
        ({"checkpoint": {"every_items": 0}}, "checkpoint.every_items: must be an integer >= 1, got 0"),
        ({"checkpoint": {"every_minutes": 1}}, "checkpoint.every_minutes: unknown key; valid keys: every_items"),
        ({"metrics": {"port": 70000}}, "metrics.port: must be an integer 0..65535"),
        ({"log": {"level": "loud"}}, "log.level: 'loud' is not one of debug, info, warning, error"),
        ({"log": {"format": "xml"}}, "log.format: 'xml' is not one of json, text"),
        ({"health": {"stall_seconds": "1m"}}, "health.stall_seconds: must be a number of seconds > 0"),
        ({"adapt.method_args": {"lr": "fast"}}, "adapt.method_args.lr (method tent) must be a number"),
        ({"adapt.rails": ["seatbelt"]}, "adapt.rails: unknown rail 'seatbelt'; valid rails:"),
        ({"adapt.colour": 1}, "adapt.colour: unknown key; valid keys: batch_size"),
        ({"adapt": None}, "adapt: missing"),
        ({"artifact": "bundled:nope"}, "artifact: no bundled artifact 'nope'; bundled: fmnist_resnet_bn"),
        ({"artifact": "no/such/dir"}, "artifact: "),
        ({"state_dir": None}, "state_dir: missing"),
        ({"streams": []}, "streams: must be a non-empty list"),
    ],
)
def test_every_config_error_names_the_key_path_and_the_allowed_values(tmp_path, change, expected):
    with pytest.raises(ConfigError) as err:
        build_daemon_config(config_with(change), tmp_path)
    assert expected in str(err.value)


def test_stream_names_and_outputs_are_unique(tmp_path):
    data = config_with({})
    data["streams"].append(stream_entry("s0", "b.npz", "out/other.jsonl"))
    with pytest.raises(ConfigError, match=r"streams\[1\]\.name: 's0' is already the name of streams\[0\]"):
        build_daemon_config(data, tmp_path)
    data["streams"][1]["name"] = "s1"
    data["streams"][1]["output"]["path"] = "out/s0.jsonl"
    with pytest.raises(ConfigError, match=r"streams\[1\]\.output\.path: .* is written by streams\[0\] too"):
        build_daemon_config(data, tmp_path)


def test_a_stream_adapt_error_is_named_under_the_stream(tmp_path):
    data = config_with({})
    data["streams"][0]["adapt"] = {"batch_size": 0}
    with pytest.raises(ConfigError, match=r"streams\[0\]\.adapt\.batch_size: must be an integer >= 1"):
        build_daemon_config(data, tmp_path)


def test_edgetta_run_with_a_bad_config_prints_one_line_naming_the_key(tmp_path, capsys):
    path = write_config(tmp_path, checkpoint={"every_items": "often"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("edgetta run: error: checkpoint.every_items: must be an integer >= 1, got 'often'")
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_reload_is_safe_only_for_log_checkpoint_health_and_the_metrics_address(tmp_path):
    old = build_daemon_config(config_with({}), tmp_path)
    safe = build_daemon_config(config_with({"log": {"level": "debug"}, "checkpoint": {"every_items": 7}}), tmp_path)
    assert reload_diff(old, safe) == []
    unsafe = build_daemon_config(config_with({"adapt": {"preset": "eata"}, "streams.0.queue": {"size": 3}}), tmp_path)
    assert reload_diff(old, unsafe) == ["adapt", "streams[0].queue"]
    moved = build_daemon_config(config_with({"metrics": {"port": 9200}}), tmp_path)
    assert reload_diff(old, moved) == ["metrics (turned on or off)"]
    assert reload_diff(moved, build_daemon_config(config_with({"metrics": {"port": 9201}}), tmp_path)) == []


EXAMPLES = sorted((REPO / "configs").glob("daemon-*.yaml"))


def test_the_example_configs_cover_the_documented_deployments():
    names = {p.name for p in EXAMPLES}
    assert {
        "daemon-camera-tent.yaml",
        "daemon-video-eata.yaml",
        "daemon-images.yaml",
        "daemon-eeg-replay.yaml",
        "daemon-lsl-eeg.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads_and_validates(path):
    """Artifacts that are the user's own (a sleep-staging model) are swapped for the bundled one here;
    everything else is validated as written. The runnable ones run in tests/test_daemon_configs.py."""
    data = yaml.safe_load(path.read_text())
    if not str(data["artifact"]).startswith("bundled:"):
        data["artifact"] = "bundled:fmnist_resnet_bn"
    config = build_daemon_config(data, path.parent)
    assert config.streams and all(s.output.path is not None for s in config.streams)
    text = path.read_text()
    assert text.startswith("#") and "Change:" in text  # says what to change


def test_a_source_or_preprocess_value_refused_at_start_names_its_key_as_written(tmp_path, capsys):
    """Source and preprocessing values are checked when the daemon opens the source, before any work."""
    entry = {
        "name": "clip",
        "source": {"kind": "video", "path": "clip.mp4", "seek": "sideways"},
        "output": {"path": "out/clip.jsonl"},
    }
    assert main(["run", str(write_config(tmp_path, [entry]))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgetta run: error: streams[0].source.seek: must be one of") and "\n" not in err
    entry["source"].pop("seek")
    entry["preprocess"] = {"colour": "gray"}
    assert main(["run", str(write_config(tmp_path, [entry]))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgetta run: error: streams[0].preprocess.colour: unknown key") and "\n" not in err
