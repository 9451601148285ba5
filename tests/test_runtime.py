"""Runtime behaviour on real trained models: the bundled Fashion-MNIST BatchNorm ResNet (edgetta/assets)
and its GroupNorm twin (tests/assets), fed the bundled demo stream (clean + corrupted phases).

Each test names a feature and fails when that feature is removed (see the mutation table in README)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import edgetta
from edgetta.errors import CheckpointError, ConfigError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import RuntimeConfig, load_config
from tests.conftest import run_without_torch

ASSETS = Path(edgetta.__file__).parent / "assets"
BN_ART = ASSETS / "fmnist_resnet_bn"
GN_ART = Path(__file__).parent / "assets" / "fmnist_resnet_gn"
FAST = {"optimizer": "adam", "lr": 1e-3}


@dataclass
class Stream:
    images: np.ndarray  # uint8 [N, 28, 28]
    x: np.ndarray  # float32 [N, 1, 28, 28], model-ready
    y: np.ndarray
    phase: np.ndarray


@pytest.fixture(scope="module")
def stream() -> Stream:
    with np.load(ASSETS / "demo_stream.npz", allow_pickle=False) as data:
        images, labels, phase = data["images"], data["labels"], data["phase"]
    x = ((images.astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]
    return Stream(images, x.astype(np.float32), labels.astype(np.int64), phase)


def run(adapter: Adapter, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([adapter.process(x[i : i + batch]).preds for i in range(0, len(x), batch)])


def run_sizes(adapter: Adapter, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    preds, start = [], 0
    for size in sizes:
        preds.append(adapter.process(x[start : start + size]).preds)
        start += size
    return np.concatenate(preds)


def accuracy(art, config, x, y, batch: int = 64) -> float:
    return float((run(Adapter(art, config), x, batch) == y).mean())


def mean_entropy(adapter: Adapter, x: np.ndarray) -> float:
    return float(np.concatenate([adapter.process(x[i : i + 64]).entropy for i in range(0, len(x), 64)]).mean())


def shifted(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    mask = (stream.phase == 1) | (stream.phase == 3)  # gaussian and impulse noise, severity 5
    return stream.x[mask], stream.y[mask]


# -- adaptation pays over its baselines -----------------------------------------------------------------
def test_adaptation_beats_frozen_on_shifted_streams(stream):
    x, y = shifted(stream)
    frozen = accuracy(BN_ART, load_config(method="frozen"), x, y)
    for method, extra in (("tent", {}), ("eata", {"eps": 0.4}), ("sar", {})):
        acc = accuracy(
            BN_ART, load_config(method=method, method_args={**FAST, **extra}, rails=["nonfinite_guard"]), x, y
        )
        assert acc > frozen + 0.10, f"{method}: {acc:.3f} vs frozen {frozen:.3f}"


@pytest.mark.parametrize("method,extra", [("tent", {}), ("eata", {"eps": 0.4}), ("sar", {})])
def test_gradient_step_lowers_entropy_below_bn_refresh(stream, method, extra):
    """The gradient step itself must do something: against BN statistics refresh (same statistics, no
    step), entropy minimisation must lower the stream's mean prediction entropy without costing accuracy."""
    x, y = shifted(stream)
    bn = Adapter(BN_ART, load_config(method="bn"))
    adapted = Adapter(BN_ART, load_config(method=method, method_args={**FAST, **extra}))
    bn_entropy, adapted_entropy = mean_entropy(bn, x), mean_entropy(adapted, x)
    assert adapted.totals["updates"] >= 3
    assert adapted_entropy < bn_entropy - 0.005, f"{method} {adapted_entropy:.4f} vs bn {bn_entropy:.4f}"
    bn_acc = accuracy(BN_ART, load_config(method="bn"), x, y)
    acc = accuracy(BN_ART, load_config(method=method, method_args={**FAST, **extra}), x, y)
    assert acc >= bn_acc - 0.01, f"{method} {acc:.3f} vs bn {bn_acc:.3f}"


# -- any batch size ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_fmnist() -> tuple[np.ndarray, np.ndarray]:
    """1,200 Fashion-MNIST test images under Gaussian noise, severity 5 (the Debian dataset package)."""
    from edgetta.data import load_fashion_mnist, to_model_input
    from edgetta.data.corruptions import corrupt

    images, labels = load_fashion_mnist("test")
    pick = np.random.default_rng(1).choice(len(images), 1200, replace=False)
    return to_model_input(corrupt(images[pick], "gaussian_noise", 5, 0)), labels[pick].astype(np.int64)


def test_any_batch_size_is_safe(noisy_fmnist):
    """Tent with the default config (batch_size 64) fed 64, 1, 7 and mixed rows per call: small calls go
    through the sliding window, so accuracy stays within a point of the batch-64 run."""
    x, y = noisy_fmnist
    config = load_config(method="tent", method_args=FAST)
    assert config.batch_size == 64
    rng = np.random.default_rng(0)
    draws = {64: lambda: 64, 1: lambda: 1, 7: lambda: 7, "mixed": lambda: int(rng.choice([1, 3, 7, 20, 64]))}
    results = {}
    for label, draw in draws.items():
        plan: list[int] = []
        while sum(plan) < len(x):
            plan.append(min(draw(), len(x) - sum(plan)))
        adapter = Adapter(BN_ART, config)
        preds = run_sizes(adapter, x, plan)
        results[label] = (float((preds == y).mean()), adapter)
    reference = results[64][0]
    report = {k: round(v[0], 4) for k, v in results.items()}
    print("accuracy by call size:", report)
    for label, (acc, adapter) in results.items():
        assert abs(acc - reference) <= 0.01, f"batch {label}: {report}"
        assert adapter.totals["updates"] >= 4
    assert results[1][1].event_counts["window"] >= 1


def test_batch_size_one_keeps_one_update_per_window(stream):
    config = load_config(method="tent", method_args=FAST, window=8, min_batch=4)
    adapter = Adapter(BN_ART, config)
    x = stream.x[stream.phase == 1][:40]
    result = [adapter.process(x[i : i + 1]) for i in range(len(x))]
    assert all(0 <= r.preds[0] < 10 for r in result)
    assert adapter.totals["updates"] == 40 // 8
    window_events = [e for r in result for e in r.events if e.kind == "window"]
    assert len(window_events) == 1 and "sliding window of the last 8 rows" in window_events[0].reason


def test_group_norm_models_need_no_window(stream):
    adapter = Adapter(GN_ART, load_config(method="tent", method_args=FAST))
    assert adapter.window is None
    result = adapter.process(stream.x[:1])
    assert result.updated and not any(e.kind == "window" for e in result.events)


# -- one rail pipeline for every method ---------------------------------------------------------------
def test_rails_act_on_forward_only_bn_refresh(stream):
    """bn_ema + periodic_reset(every=2) + collapse_guard: the statistics updates pass the rails."""
    config = load_config(preset="bn_ema", rails=[{"name": "periodic_reset", "every": 2}, "collapse_guard"])
    adapter = Adapter(BN_ART, config)
    run(adapter, stream.x[(stream.phase == 1) | (stream.phase == 2)])  # 10 batches of 64
    assert adapter.totals["updates"] == 10
    assert adapter.state.reset_count == 5
    assert adapter.event_counts["reset"] == 5


def test_bn_refresh_updates_running_statistics_and_trust_region_bounds_them(stream):
    x = stream.x[stream.phase == 1][:256]
    free = Adapter(BN_ART, load_config(preset="bn_ema"))
    bounded = Adapter(BN_ART, load_config(preset="bn_ema", rails=[{"name": "trust_region", "max_step": 1e-5}]))
    run(free, x)
    run(bounded, x)
    key = free.state.running_stats[0][0]

    def moved(a: Adapter) -> float:
        return float(np.abs(a.state.params[key] - a.state.source[key]).sum())

    assert moved(free) > 0 and moved(bounded) < 0.1 * moved(free)
    assert bounded.event_counts["clip"] > 0


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"method": "frozen", "rails": ["collapse_guard"]}, "never changes the model"),
        ({"method": "lame", "rails": ["nonfinite_guard"]}, "never changes the model"),
        ({"method": "bn", "rails": ["periodic_reset"]}, "method bn offers statistics;"),
        ({"method": "bn", "method_args": {"bn_alpha": 0.0}, "rails": ["periodic_reset"]}, "never changes the model"),
        ({"method": "frozen", "rails": ["label_shift_guard"]}, "never changes the model"),
        ({"method": "lame", "rails": ["label_shift_guard"]}, "never changes the model"),
        ({"preset": "bn_ema", "rails": ["label_shift_guard"]}, "label_shift_guard acts on statistics"),
        ({"method": "tent", "method_args": {"bn_alpha": 0.0}, "rails": ["label_shift_guard"]}, "acts on statistics"),
        ({"preset": "bn_ema", "rails": ["entropy_gate"]}, "sample_weights"),
        ({"preset": "bn_ema", "rails": ["fisher_anchor"]}, "gradients"),
    ],
)
def test_rails_a_method_cannot_host_are_refused_at_load(config, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(**config)


def test_rail_order_is_fixed_by_declaration_and_logged(stream):
    listed = ["periodic_reset", "trust_region", "entropy_gate", "fisher_anchor", "nonfinite_guard"]
    adapter = Adapter(BN_ART, load_config(method="tent", method_args=FAST, rails=listed))
    expected = ["nonfinite_guard", "entropy_gate", "fisher_anchor", "trust_region", "periodic_reset"]
    assert adapter.rails.names == expected
    events = adapter.process(stream.x[:64]).events
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["rails", "reorder"]
    assert events[0].data["order"] == expected and events[1].data["configured"] == listed
    assert "reorder" not in [e.kind for e in adapter.process(stream.x[64:128]).events]


def test_guard_runs_before_resets_whatever_the_config_order(stream):
    """A non-finite proposal is rejected before periodic_reset counts it as an applied update."""
    config = load_config(
        method="tent", method_args=FAST, rails=[{"name": "periodic_reset", "every": 1}, "nonfinite_guard"]
    )
    adapter = Adapter(BN_ART, config)
    original = adapter.method.optimizer.step

    def poisoned(params, grads):
        original(params, grads)
        first = next(iter(params))
        params[first][0] = np.nan

    adapter.method.optimizer.step = poisoned
    result = adapter.process(stream.x[:64])
    assert not result.updated
    assert [e.kind for e in result.events if e.rail != "runtime"] == ["reject"]
    assert adapter.state.reset_count == 0


@pytest.mark.parametrize("declared", ["SAMPLE_WEIGHTS", "RESET"])
def test_a_new_sample_weighting_rail_needs_no_registration_in_methods(stream, monkeypatch, declared):
    """A rail's sample weights are used: when it declares them (Tent previews the entropies first) and even
    when it does not (Tent's one call used uniform weights, so the adapt graph runs again)."""
    from edgetta.safety import RAILS, Rail, Target

    class KeepFirstHalf(Rail):
        name = "keep_first_half"
        acts_on = frozenset({Target[declared]})

        def before_update(self, ctx):
            n = len(ctx.weights)
            ctx.weights = np.where(np.arange(n) < n // 2, 2.0 / n, 0.0).astype(np.float32)

    monkeypatch.setitem(RAILS, KeepFirstHalf.name, KeepFirstHalf)
    x = stream.x[stream.phase == 1][:64]
    adapter = Adapter(
        BN_ART,
        load_config(
            method="tent", method_args={"optimizer": "sgd", "lr": 0.1, "momentum": 0.0}, rails=["keep_first_half"]
        ),
    )
    before = {k: v.copy() for k, v in adapter.state.trainable_params().items()}
    weights = np.where(np.arange(64) < 32, 1 / 32, 0.0).astype(np.float32)
    expected = adapter.engine.adapt(x, adapter.state.params, 1.0, weights, np.zeros_like(weights))
    adapter.process(x)
    assert adapter.totals["backward_passes"] == (1 if declared == "SAMPLE_WEIGHTS" else 2)
    for name, grad in adapter.artifact.grad_names.items():
        np.testing.assert_allclose(
            adapter.state.params[name], before[name] - 0.1 * expected[grad], rtol=1e-5, atol=1e-6
        )


# -- rails that keep adaptation safe ----------------------------------------------------------------------
SAFE = {"preset": "safe_tent", "method_args": {"optimizer": "adam", "lr": 1e-2}}
PLAIN = {"method": "tent", "method_args": {"optimizer": "adam", "lr": 1e-2}, "rails": ["nonfinite_guard"]}


def test_rails_hold_on_label_sorted_stream_where_plain_tent_degrades(stream):
    idx = np.flatnonzero((stream.phase == 1) | (stream.phase == 2))
    idx = idx[np.argsort(stream.y[idx], kind="stable")]
    x, y = stream.x[idx], stream.y[idx]
    frozen = accuracy(GN_ART, load_config(method="frozen"), x, y)
    plain = accuracy(GN_ART, load_config(**PLAIN), x, y)
    safe = accuracy(GN_ART, load_config(**SAFE), x, y)
    assert plain < frozen - 0.05, f"plain tent {plain:.3f} should degrade vs frozen {frozen:.3f}"
    assert safe >= frozen - 0.01, f"rails {safe:.3f} vs frozen {frozen:.3f}"


def test_rails_hold_on_pure_noise_stream_where_plain_tent_collapses(stream):
    noise = np.random.default_rng(0).normal(size=(640, 1, 28, 28)).astype(np.float32) * 1.5
    clean = (stream.phase == 0) | (stream.phase == 5)

    def clean_accuracy_after_noise(config) -> tuple[float, Adapter]:
        adapter = Adapter(GN_ART, load_config(**config))
        run(adapter, noise)
        logits = adapter.engine.infer(stream.x[clean], adapter.state.params, 1.0)["logits"]
        return float((logits.argmax(1) == stream.y[clean]).mean()), adapter

    source = float(
        (Adapter(GN_ART, load_config(method="frozen")).process(stream.x[clean]).preds == stream.y[clean]).mean()
    )
    plain, _ = clean_accuracy_after_noise(PLAIN)
    safe, adapter = clean_accuracy_after_noise(SAFE)
    assert plain < source - 0.2, f"plain tent on noise should collapse: {plain:.3f} vs {source:.3f}"
    assert safe >= source - 0.01, f"rails {safe:.3f} vs source {source:.3f}"
    assert adapter.event_counts["skip"] + adapter.event_counts["gate"] > 0


def test_fisher_anchor_limits_forgetting_against_a_no_anchor_control(stream):
    """EATA Eq. 9: the anchor must shrink the Fisher-weighted drift sum F (theta - theta0)^2 against the same
    run without it, and keep clean accuracy (beta 2000, EATA's ImageNet value; this model's Fisher is ~1e-3)."""
    shifted_x = stream.x[stream.phase != 0]
    clean = stream.phase == 0

    def adapt(rails) -> tuple[float, float]:
        adapter = Adapter(GN_ART, load_config(method="eata", method_args={**FAST, "eps": 0.4}, rails=rails))
        run(adapter, shifted_x)
        assert adapter.state.update_count > 0
        fisher, anchor = adapter.artifact.fisher, adapter.artifact.anchor
        drift = sum(float((fisher[k] * np.square(adapter.state.params[k] - anchor[k])).sum()) for k in fisher)
        logits = adapter.engine.infer(stream.x[clean], adapter.state.params, 1.0)["logits"]
        return drift, float((logits.argmax(1) == stream.y[clean]).mean())

    free_drift, _ = adapt(["nonfinite_guard"])
    anchored_drift, anchored_acc = adapt(["nonfinite_guard", {"name": "fisher_anchor", "beta": 2000.0}])
    frozen = Adapter(GN_ART, load_config(method="frozen"))
    source_acc = float((frozen.process(stream.x[clean]).preds == stream.y[clean]).mean())
    assert anchored_drift < 0.75 * free_drift, f"anchored {anchored_drift:.3g} vs free {free_drift:.3g}"
    assert anchored_acc >= source_acc - 0.01, f"clean accuracy {anchored_acc:.3f} vs source {source_acc:.3f}"


def test_eata_preset_runs_without_a_fisher_diagonal_and_says_so(tmp_path, stream, caplog):
    art = _artifact_without_fisher(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edgetta"):
        adapter = Adapter(art, load_config(preset="eata"))
    assert "fisher_anchor" not in adapter.rails.names
    assert any("dropped: fisher_anchor" in r.getMessage() and "--calib" in r.getMessage() for r in caplog.records)
    events = adapter.process(stream.x[:64]).events
    assert events[0].kind == "downgrade" and events[0].data["dropped"] == "fisher_anchor"
    assert events[0].to_json()["rail"] == "runtime"
    with pytest.raises(ConfigError, match="--calib"):
        Adapter(art, load_config(preset="eata", rails=[{"name": "fisher_anchor", "required": True}]))


# -- inputs -------------------------------------------------------------------------------------------------
def test_bad_inputs_become_skip_records_and_parameters_stay_finite(stream):
    adapter = Adapter(BN_ART, load_config(method="tent", method_args=FAST))
    x = stream.x[:16].copy()
    x[3, 0, 0, 0] = np.nan
    x[7] = np.inf
    result = adapter.process(x)
    assert result.skipped[3] == "non-finite values in input" and result.preds[3] == -1
    assert result.skipped[0] is None and result.preds[0] >= 0
    wrong = adapter.process(np.zeros((4, 3, 28, 28), np.float32))
    assert all("shape" in reason and "[N, 1, 28, 28]" in reason for reason in wrong.skipped)
    text = adapter.process(np.full((2, 1, 28, 28), "a"))
    assert all("not numeric" in reason for reason in text.skipped)
    assert all(np.isfinite(v).all() for v in adapter.state.params.values())
    assert adapter.totals["skipped"] == 8


def test_raw_uint8_frames_get_the_recorded_preprocessing(stream, tmp_path):
    images = stream.images[:64][:, None]
    by_float = Adapter(BN_ART, load_config(method="frozen")).process(stream.x[:64])
    adapter = Adapter(BN_ART, load_config(method="frozen"))
    by_uint8 = adapter.process(images)
    np.testing.assert_allclose(by_uint8.logits, by_float.logits, rtol=1e-4, atol=1e-4)
    assert any(e.kind == "preprocess" for e in by_uint8.events)
    bare = tmp_path / "bare"
    shutil.copytree(BN_ART, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["input"]["preprocess"] = {}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    refused = Adapter(bare, load_config(method="frozen")).process(images)
    assert (refused.preds == -1).all() and "records no preprocessing" in refused.skipped[0]


# -- checkpoints ------------------------------------------------------------------------------------------
def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, stream):
    config = load_config(
        method="eata",
        method_args={**FAST, "eps": 0.4},
        rails=["nonfinite_guard", {"name": "stochastic_restore", "p": 0.01}, "ema_reset", "collapse_guard"],
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
    assert resumed.totals == straight.totals


def test_checkpoint_resume_mid_window_at_batch_one(tmp_path, stream):
    config = load_config(method="tent", method_args=FAST, window=16)
    x = stream.x[stream.phase == 1][:60]
    straight = Adapter(BN_ART, config)
    expected = run(straight, x, batch=1)
    interrupted = Adapter(BN_ART, config)
    run(interrupted, x[:37], batch=1)
    interrupted.save(tmp_path / "w.safetensors")
    resumed = Adapter(BN_ART, config)
    resumed.restore(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(run(resumed, x[37:], batch=1), expected[37:])


def _assert_at_source(adapter: Adapter) -> None:
    for k, v in adapter.state.params.items():
        np.testing.assert_array_equal(v, adapter.state.source[k])
    tensors, _ = adapter.method.method_state()
    assert not any(k.startswith("optim/") and v.size and np.any(v) for k, v in tensors.items())
    assert adapter.state.update_count == 0


def test_restore_into_a_different_rail_list_is_a_named_error_and_leaves_everything_at_source(tmp_path, stream):
    saved = Adapter(BN_ART, load_config(method="tent", method_args=FAST, rails=["nonfinite_guard", "collapse_guard"]))
    run(saved, stream.x[:256])
    path = tmp_path / "state.safetensors"
    saved.save(path)
    for rails, needle in (
        (["nonfinite_guard", "ema_reset"], "collapse_guard"),
        (["nonfinite_guard", {"name": "collapse_guard", "threshold": 0.5}], "threshold"),
    ):
        other = Adapter(BN_ART, load_config(method="tent", method_args=FAST, rails=rails))
        run(other, stream.x[256:384])  # some state of its own, which a failed restore must not keep
        with pytest.raises(CheckpointError, match=needle):
            other.restore(path)
        _assert_at_source(other)
        assert all(r.state()[1].get("ema") is None for r in other.rails.rails if r.name == "collapse_guard")


def test_truncated_or_foreign_checkpoint_is_refused_and_source_kept(tmp_path, stream):
    config = load_config(method="tent", method_args=FAST)
    adapter = Adapter(BN_ART, config)
    run(adapter, stream.x[:128])
    path = tmp_path / "state.safetensors"
    adapter.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fresh = Adapter(BN_ART, config)
    run(fresh, stream.x[128:256])
    with pytest.raises(CheckpointError):
        fresh.restore(path)
    _assert_at_source(fresh)
    other = Adapter(BN_ART, load_config(method="sar", method_args=FAST))
    adapter.save(path)
    with pytest.raises(CheckpointError, match="method"):
        other.restore(path)


# -- configuration --------------------------------------------------------------------------------------
def test_code_and_file_configs_share_defaults(tmp_path):
    assert RuntimeConfig(method="tent") == load_config(method="tent")
    file = tmp_path / "c.yaml"
    file.write_text("method: tent\n")
    assert load_config(file) == RuntimeConfig(method="tent")
    assert load_config(preset="safe_tent").name == "safe_tent"
    assert load_config(preset="tent").rails == ["nonfinite_guard", "label_shift_guard"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'tentt'.*safe_tent"):
        load_config(method="tentt")
    with pytest.raises(ConfigError, match="learning_rate.*valid: .*lr"):
        load_config(method="tent", method_args={"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="method_args.lr .*number, got 'fast'"):
        RuntimeConfig(method="tent", method_args={"lr": "fast"})
    with pytest.raises(ConfigError, match="bn_alpha"):
        load_config(method="bn", method_args={"alpha": 0.5})
    with pytest.raises(ConfigError, match="bn_momentum"):
        load_config(method="bn", method_args={"momentum": 0.1})
    with pytest.raises(ConfigError, match="unknown config key.*checkpoint"):
        load_config(method="tent", checkpoint={"every": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: tent\nrails: [no_such_rail]\n")
    with pytest.raises(ConfigError, match="no_such_rail"):
        load_config(bad)
    bad.write_text("method: tent\nmethod_args: {lr: fast}\n")
    with pytest.raises(ConfigError, match="method_args.lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="min_batch"):
        load_config(method="tent", min_batch=0)


def _artifact_without_fisher(tmp_path: Path) -> Path:
    """Copy of the bundled artifact with the Fisher tensors removed (and hashes updated)."""
    from safetensors.numpy import load_file, save_file

    from edgetta.contract import sha256_file

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


# -- torch-free, reforward -----------------------------------------------------------------------------------
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
    pre = Adapter(BN_ART, load_config(**base)).process(x)
    post_adapter = Adapter(BN_ART, load_config(**{**base, "method_args": {**base["method_args"], "reforward": True}}))
    post = post_adapter.process(x)
    assert post.updated and not np.allclose(pre.logits, post.logits)
    expected = post_adapter.engine.infer(x, post_adapter.state.params, 1.0)["logits"]
    np.testing.assert_allclose(post.logits, expected, rtol=1e-5, atol=1e-5)
    assert post_adapter.totals["forward_passes"] == 2


def test_engine_fallbacks_become_events(stream):
    adapter = Adapter(BN_ART, load_config(method="frozen"))
    adapter.engine.fallbacks.append("the rewritten infer graph is not used (test); running the exported graph")
    events = adapter.process(stream.x[:4]).events
    assert [e.kind for e in events] == ["downgrade"] and "rewritten infer graph" in events[0].reason
    assert adapter.process(stream.x[:4]).events == []
