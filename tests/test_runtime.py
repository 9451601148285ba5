"""Runtime behaviour on real trained models: the bundled Fashion-MNIST BatchNorm ResNet (edgetta/assets)
and its GroupNorm twin (tests/assets), fed the bundled demo stream (clean + corrupted phases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetta.demo import DemoStream, asset_path
from edgetta.errors import ConfigError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.checkpoint import CheckpointError
from edgetta.runtime.config import load_config
from tests.conftest import run_without_torch

BN_ART = asset_path("fmnist_resnet_bn")
GN_ART = Path(__file__).parent / "assets" / "fmnist_resnet_gn"
FAST = {"optimizer": "adam", "lr": 1e-3}


@pytest.fixture(scope="module")
def stream() -> DemoStream:
    return DemoStream.load()


def run(adapter: Adapter, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([adapter.process(x[i : i + batch]).preds for i in range(0, len(x), batch)])


def accuracy(art, config, x, y) -> float:
    return float((run(Adapter(art, config), x, config.batch_size) == y).mean())


def test_adaptation_beats_frozen_on_shifted_streams(stream):
    shifted = (stream.phase == 1) | (stream.phase == 3)  # gaussian and impulse noise, severity 5
    x, y = stream.x[shifted], stream.y[shifted]
    frozen = accuracy(BN_ART, load_config(None, method="frozen"), x, y)
    for method, extra in (("tent", {}), ("eata", {"eps": 0.4}), ("sar", {})):
        acc = accuracy(
            BN_ART, load_config(None, method=method, method_args={**FAST, **extra}, rails=["nonfinite_guard"]), x, y
        )
        assert acc > frozen + 0.10, f"{method}: {acc:.3f} vs frozen {frozen:.3f}"


SAFE = {"preset": "safe_tent", "method_args": {"optimizer": "adam", "lr": 1e-2}}
PLAIN = {"method": "tent", "method_args": {"optimizer": "adam", "lr": 1e-2}, "rails": ["nonfinite_guard"]}


def test_rails_hold_on_label_sorted_stream_where_plain_tent_degrades(stream):
    idx = np.flatnonzero((stream.phase == 1) | (stream.phase == 2))
    idx = idx[np.argsort(stream.y[idx], kind="stable")]
    x, y = stream.x[idx], stream.y[idx]
    frozen = accuracy(GN_ART, load_config(None, method="frozen"), x, y)
    plain = accuracy(GN_ART, load_config(None, **PLAIN), x, y)
    safe = accuracy(GN_ART, load_config(None, **SAFE), x, y)
    assert plain < frozen - 0.05, f"plain tent {plain:.3f} should degrade vs frozen {frozen:.3f}"
    assert safe >= frozen - 0.01, f"rails {safe:.3f} vs frozen {frozen:.3f}"


def test_rails_hold_on_pure_noise_stream_where_plain_tent_collapses(stream):
    noise = np.random.default_rng(0).normal(size=(640, 1, 28, 28)).astype(np.float32) * 1.5
    clean = (stream.phase == 0) | (stream.phase == 5)

    def clean_accuracy_after_noise(config) -> tuple[float, Adapter]:
        adapter = Adapter(GN_ART, load_config(None, **config))
        run(adapter, noise)
        logits = adapter.engine.infer(stream.x[clean], adapter.state.params, 1.0)["logits"]
        return float((logits.argmax(1) == stream.y[clean]).mean()), adapter

    source = float(
        (Adapter(GN_ART, load_config(None, method="frozen")).process(stream.x[clean]).preds == stream.y[clean]).mean()
    )
    plain, _ = clean_accuracy_after_noise(PLAIN)
    safe, adapter = clean_accuracy_after_noise(SAFE)
    assert plain < source - 0.2, f"plain tent on noise should collapse: {plain:.3f} vs {source:.3f}"
    assert safe >= source - 0.01, f"rails {safe:.3f} vs source {source:.3f}"
    assert adapter.event_counts["skip"] + adapter.event_counts["gate"] > 0


def test_fisher_anchor_limits_forgetting(stream):
    shifted = stream.phase != 0
    clean = stream.phase == 0
    config = load_config(
        None,
        method="eata",
        method_args={**FAST, "eps": 0.4},
        rails=["nonfinite_guard", {"name": "fisher_anchor", "beta": 50.0}],
    )
    adapter = Adapter(GN_ART, config)
    run(adapter, stream.x[shifted])
    assert adapter.state.update_count > 0
    moved = sum(float(np.abs(adapter.state.params[k] - adapter.state.source[k]).sum()) for k in adapter.state.trainable)
    assert moved > 0
    source = Adapter(GN_ART, load_config(None, method="frozen"))
    src_acc = float((source.process(stream.x[clean]).preds == stream.y[clean]).mean())
    logits = adapter.engine.infer(stream.x[clean], adapter.state.params, 1.0)["logits"]
    adapted_acc = float((logits.argmax(1) == stream.y[clean]).mean())
    assert adapted_acc >= src_acc - 0.01, f"clean accuracy {adapted_acc:.3f} vs source {src_acc:.3f}"


def test_batch_size_one_uses_sliding_window(stream):
    config = load_config(None, method="tent", method_args=FAST, rails=["nonfinite_guard"], batch_size=1, window=8)
    adapter = Adapter(BN_ART, config)
    x = stream.x[stream.phase == 1][:40]
    preds = [adapter.process(x[i : i + 1]).preds[0] for i in range(len(x))]
    assert len(preds) == 40 and all(0 <= p < 10 for p in preds)
    assert adapter.method.window == 8
    assert adapter.totals["updates"] == 40 // 8


def test_bad_inputs_become_skip_records_and_parameters_stay_finite(stream):
    adapter = Adapter(BN_ART, load_config(None, method="tent", method_args=FAST))
    x = stream.x[:16].copy()
    x[3, 0, 0, 0] = np.nan
    x[7] = np.inf
    result = adapter.process(x)
    assert result.skipped[3] == "non-finite values in input" and result.preds[3] == -1
    assert result.skipped[0] is None and result.preds[0] >= 0
    wrong = adapter.process(np.zeros((4, 3, 28, 28), np.float32))
    assert all("shape" in reason for reason in wrong.skipped)
    assert all(np.isfinite(v).all() for v in adapter.state.params.values())
    assert adapter.totals["skipped"] == 6


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, stream):
    config = load_config(
        None,
        method="eata",
        method_args={**FAST, "eps": 0.4},
        rails=["nonfinite_guard", {"name": "stochastic_restore", "p": 0.01}],
    )
    x = stream.x[stream.phase == 1][:256]
    straight = Adapter(BN_ART, config)
    first = run(straight, x[:128])
    second = run(straight, x[128:])
    interrupted = Adapter(BN_ART, config)
    np.testing.assert_array_equal(run(interrupted, x[:128]), first)
    interrupted.save(tmp_path / "state.safetensors")
    resumed = Adapter(BN_ART, config)
    resumed.restore(tmp_path / "state.safetensors")
    np.testing.assert_array_equal(run(resumed, x[128:]), second)
    for k in straight.state.params:
        np.testing.assert_array_equal(straight.state.params[k], resumed.state.params[k])


def test_truncated_or_foreign_checkpoint_is_refused_and_source_kept(tmp_path, stream):
    config = load_config(None, method="tent", method_args=FAST)
    adapter = Adapter(BN_ART, config)
    run(adapter, stream.x[:128])
    path = tmp_path / "state.safetensors"
    adapter.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fresh = Adapter(BN_ART, config)
    with pytest.raises(CheckpointError):
        fresh.restore(path)
    for k, v in fresh.state.params.items():
        np.testing.assert_array_equal(v, fresh.state.source[k])
    other = Adapter(BN_ART, load_config(None, method="sar", method_args=FAST))
    adapter.save(path)
    with pytest.raises(CheckpointError, match="method"):
        other.restore(path)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'tentt'"):
        Adapter(BN_ART, load_config(None, method="tentt"))
    with pytest.raises(ConfigError, match="learning_rate"):
        Adapter(BN_ART, load_config(None, method="tent", method_args={"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, method="tent", colour="blue")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: tent\nrails: [no_such_rail]\n")
    with pytest.raises(ConfigError, match="no_such_rail"):
        Adapter(BN_ART, load_config(bad))
    with pytest.raises(ConfigError, match="--calib"):
        Adapter(_artifact_without_fisher(tmp_path), load_config(None, method="eata"))


def _artifact_without_fisher(tmp_path: Path) -> Path:
    """Copy of the bundled artifact with the Fisher tensors removed (and hashes updated)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from edgetta.runtime.artifact import sha256_file

    out = tmp_path / "nofisher"
    shutil.copytree(BN_ART, out)
    tensors = {
        k: v for k, v in load_file(str(out / "params.safetensors")).items() if not k.startswith(("fisher/", "anchor/"))
    }
    save_file(tensors, str(out / "params.safetensors"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["params"]["sha256"] = sha256_file(out / "params.safetensors")
    manifest["fisher"] = None
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_replay_cli_writes_records_summary_and_resets_per_domain(tmp_path, stream):
    from edgetta.cli import main

    pick = np.concatenate([np.flatnonzero(stream.phase == p)[:70] for p in (0, 1, 2)])
    x = stream.x[pick].copy()
    x[5] = np.nan
    data = tmp_path / "stream.npz"
    np.savez(data, x=x, y=stream.y[pick], domain=stream.phase[pick])
    out = tmp_path / "out"
    assert (
        main(
            [
                "replay",
                "--artifact",
                str(BN_ART),
                "--data",
                str(data),
                "--method",
                "eata",
                "--config",
                str(Path(__file__).parents[1] / "configs" / "replay-eata.yaml"),
                "--episodic",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(x)))
    assert records[5]["pred"] is None and "non-finite" in records[5]["skip"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 210 and summary["skipped"] == 1
    assert summary["resets"] == 2 and summary["updates"] > 0 and 0.5 < summary["accuracy"] <= 1.0
    assert summary["backward_passes"] == summary["updates"]
    for key in ("gated_samples", "events", "seconds", "forward_passes"):
        assert key in summary


@pytest.mark.parametrize("method", ["frozen", "bn", "bn_ema", "lame", "tent", "eata", "sar", "safe_tent"])
def test_every_preset_replays(tmp_path, stream, method):
    data = tmp_path / "s.npz"
    np.savez(data, x=stream.x[stream.phase == 1][:128])
    from edgetta.cli import main

    assert (
        main(
            ["replay", "--artifact", str(BN_ART), "--data", str(data), "--method", method, "--out", str(tmp_path / "o")]
        )
        == 0
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["samples"] == 128 and summary["accuracy"] is None


def test_full_adaptation_loop_never_imports_torch(tmp_path, stream):
    data = tmp_path / "s.npz"
    np.savez(data, x=stream.x[stream.phase == 1][:128], y=stream.y[stream.phase == 1][:128])
    result = run_without_torch(
        "import edgetta.runtime, edgetta.safety, edgetta.kernels\n"
        "from edgetta.cli import main\n"
        f"rc = main(['replay', '--artifact', {str(BN_ART)!r}, '--data', {str(data)!r}, '--method', 'sar',\n"
        f"           '--out', {str(tmp_path / 'o')!r}])\n",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["backward_passes"] > 0


def test_reforward_predicts_with_updated_parameters(stream):
    x = stream.x[stream.phase == 1][:64]
    base = {"method": "tent", "rails": ["nonfinite_guard"], "method_args": {"optimizer": "adam", "lr": 1e-2}}
    pre = Adapter(BN_ART, load_config(None, **base)).process(x)
    post_adapter = Adapter(
        BN_ART, load_config(None, **{**base, "method_args": {**base["method_args"], "reforward": True}})
    )
    post = post_adapter.process(x)
    assert post.updated and not np.allclose(pre.logits, post.logits)
    expected = post_adapter.engine.infer(x, post_adapter.state.params, 1.0)["logits"]
    np.testing.assert_allclose(post.logits, expected, rtol=1e-5, atol=1e-5)
    assert post_adapter.totals["forward_passes"] == 2
