"""Tests for edgetta.safety: each rail on hand-built step contexts (numpy only, fast)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgetta.errors import ConfigError
from edgetta.kernels import entropy, softmax
from edgetta.safety import (
    RAILS,
    RESET_SNAPSHOT,
    RESET_SOURCE,
    BatchEntropyGate,
    CollapseGuard,
    EmaReset,
    EntropyGate,
    FisherAnchor,
    NonfiniteGuard,
    PeriodicReset,
    Rail,
    RailEnv,
    RailPipeline,
    StepContext,
    StochasticRestore,
    Target,
    TrustRegion,
    build_rails,
)

C = 10


def source_params() -> dict[str, np.ndarray]:
    return {"bn1.weight": np.ones(4, np.float32), "bn1.bias": np.zeros(4, np.float32)}


RUNNING = (("bn1.running_mean", "bn1.running_var", "bn1.batch_mean", "bn1.batch_var"),)


def make_env(fisher: bool = True, seed: int = 0) -> RailEnv:
    src = source_params()
    fish = {k: np.full(v.shape, 0.5 + i, np.float32) for i, (k, v) in enumerate(src.items())} if fisher else {}
    anchor = {k: v.copy() for k, v in src.items()} if fisher else {}
    stats = {"bn1.running_mean": np.zeros(4, np.float32), "bn1.running_var": np.ones(4, np.float32)}
    return RailEnv(num_classes=C, source={**src, **stats}, fisher=fish, anchor=anchor, seed=seed, running_stats=RUNNING)


def make_ctx(
    logits: np.ndarray | None = None,
    *,
    entropies: np.ndarray | None = None,
    params: dict[str, np.ndarray] | None = None,
    proposed: dict[str, np.ndarray] | None = None,
    grads: dict[str, np.ndarray] | None = None,
    loss: float | None = None,
    batch_index: int = 0,
    update_count: int = 0,
) -> StepContext:
    if logits is None:
        logits = np.random.default_rng(batch_index).normal(size=(8, C)).astype(np.float32)
    ent = entropy(logits) if entropies is None else np.asarray(entropies, np.float32)
    return StepContext(
        batch_index=batch_index,
        update_count=update_count,
        num_classes=logits.shape[-1],
        logits=logits,
        probs=softmax(logits),
        entropy=ent,
        weights=np.ones(len(ent), np.float32),
        params=params if params is not None else source_params(),
        source=source_params(),
        grads=grads,
        loss=loss,
        proposed=proposed,
    )


def kinds(ctx: StepContext) -> list[str]:
    return [e.kind for e in ctx.events]


def roundtrip(rail: Rail) -> Rail:
    """Rebuild a rail of the same config from its state, going through JSON for the meta."""
    tensors, meta = rail.state()
    fresh = type(rail)(**{k: getattr(rail, k) for k in _config_keys(rail)})
    fresh.load_state({k: np.array(v) for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    return fresh


def _config_keys(rail: Rail) -> list[str]:
    from edgetta.safety import rail_arguments

    return [k for k in rail_arguments(type(rail)) if hasattr(rail, k)]


def test_safety_does_not_import_torch():
    code = "import sys, edgetta.safety; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- entropy_gate


def test_entropy_gate_zeros_unreliable_and_emits_gate():
    gate = EntropyGate()
    gate.bind(make_env())
    e0 = 0.4 * math.log(C)
    assert gate.threshold() == pytest.approx(e0)
    ctx = make_ctx(entropies=np.array([0.1, e0, 2.0, np.nan, 0.5]))
    gate.before_update(ctx)
    np.testing.assert_array_equal(ctx.weights, [1, 0, 0, 0, 1])
    assert ctx.weights.dtype == np.float32
    assert not ctx.skip_update
    (event,) = ctx.events
    assert (event.kind, event.data["kept"], event.data["dropped"]) == ("gate", 2, 3)
    json.dumps(event.to_json())


def test_entropy_gate_silent_when_all_kept_and_skips_when_none_remain():
    gate = EntropyGate(e0=1.0)
    ctx = make_ctx(entropies=np.array([0.1, 0.2]))
    gate.before_update(ctx)
    assert ctx.events == [] and not ctx.skip_update
    ctx = make_ctx(entropies=np.array([1.0, 3.0]))
    gate.before_update(ctx)
    assert ctx.skip_update and kinds(ctx) == ["skip"]
    assert ctx.events[0].data["kept"] == 0 and ctx.events[0].data["dropped"] == 2


def test_entropy_gate_config_errors():
    with pytest.raises(ConfigError, match="e0_fraction"):
        EntropyGate(e0_fraction=1.5)
    with pytest.raises(ConfigError, match="not both"):
        EntropyGate(e0=1.0, e0_fraction=0.4)
    with pytest.raises(ConfigError, match="entropy_gate.e0"):
        EntropyGate(e0="high")


# ---------------------------------------------------------------- batch_entropy_gate


def test_batch_gate_max_mean_default_is_stableslep_1_2_at_five_classes():
    gate = BatchEntropyGate()
    assert gate.mode == "max_mean"
    assert gate.max_mean_threshold(5) == pytest.approx(1.2)
    ctx = make_ctx(entropies=np.array([1.0, 1.3]))  # mean 1.15
    ctx.num_classes = 5
    gate.before_update(ctx)
    assert not ctx.skip_update
    ctx = make_ctx(entropies=np.array([1.2, 1.4]))
    ctx.num_classes = 5
    gate.before_update(ctx)
    assert ctx.skip_update and kinds(ctx) == ["skip"]
    assert ctx.events[0].data["value"] == pytest.approx(1.3)
    frac = BatchEntropyGate(max_mean_fraction=0.5)
    assert frac.max_mean_threshold(C) == pytest.approx(0.5 * math.log(C))


def test_batch_gate_band_uses_ema_and_round_trips():
    gate = BatchEntropyGate(h_min=0.2, h_max=1.0, momentum=0.5)
    assert gate.mode == "band"
    ctx = make_ctx(entropies=np.full(4, 0.8))
    gate.before_update(ctx)
    assert not ctx.skip_update and gate.ema == pytest.approx(0.8)
    ctx = make_ctx(entropies=np.full(4, 2.0))  # EMA 1.4 > 1.0
    gate.before_update(ctx)
    assert ctx.skip_update and ctx.events[0].data["value"] == pytest.approx(1.4)
    restored = roundtrip(gate)
    assert restored.ema == pytest.approx(1.4) and restored.batches == 2
    ctx = make_ctx(entropies=np.full(4, 0.1))  # EMA 0.75, back inside
    restored.before_update(ctx)
    assert not ctx.skip_update
    restored.on_reset(RESET_SOURCE)
    assert restored.ema is None


def test_batch_gate_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        BatchEntropyGate(mode="median")
    with pytest.raises(ConfigError, match="h_min"):
        BatchEntropyGate(mode="band")
    with pytest.raises(ConfigError, match="h_min"):
        BatchEntropyGate(h_min=2.0, h_max=1.0)
    with pytest.raises(ConfigError, match="max_mean"):
        BatchEntropyGate(h_max=1.0, max_mean=1.2)


# ---------------------------------------------------------------- fisher_anchor


def test_fisher_anchor_adds_two_beta_f_delta():
    env = make_env()
    rail = FisherAnchor(beta=3.0)
    rail.bind(env)
    params = {"bn1.weight": np.array([1.5, 1.0, 0.5, 2.0], np.float32), "bn1.bias": np.full(4, 0.1, np.float32)}
    grads = {k: np.full(4, 0.25, np.float32) for k in params}
    ctx = make_ctx(params=params, grads={k: v.copy() for k, v in grads.items()})
    rail.on_gradients(ctx)
    penalty = 0.0
    for key, theta in params.items():
        delta = theta - env.anchor[key]
        expected = grads[key] + 2 * 3.0 * env.fisher[key] * delta
        np.testing.assert_allclose(ctx.grads[key], expected, rtol=1e-6)
        assert ctx.grads[key].dtype == np.float32
        penalty += 3.0 * float(np.sum(env.fisher[key] * delta * delta))
    assert ctx.events == []
    _, meta = rail.state()
    assert meta["last_penalty"] == pytest.approx(penalty, rel=1e-6)
    assert roundtrip(rail).last_penalty == pytest.approx(penalty, rel=1e-6)


def test_fisher_anchor_needs_fisher_in_artifact():
    with pytest.raises(ConfigError, match="--calib"):
        FisherAnchor().bind(make_env(fisher=False))
    with pytest.raises(ConfigError, match="beta"):
        FisherAnchor(beta=-1)


# ---------------------------------------------------------------- collapse_guard


def _update_ctx(ent: float, batch_index: int = 0, logits: np.ndarray | None = None) -> StepContext:
    logits = logits if logits is not None else np.random.default_rng(batch_index).normal(size=(4, C))
    ctx = make_ctx(logits, entropies=np.full(len(logits), ent), batch_index=batch_index)
    ctx.proposed = source_params()
    return ctx


def test_collapse_guard_resets_when_entropy_ema_drops_below_threshold():
    guard = CollapseGuard(max_class_fraction=None)
    ema = None
    fired_at = None
    for i in range(40):
        ctx = _update_ctx(0.05 if i >= 1 else 1.0, batch_index=i)
        guard.before_update(ctx)
        guard.after_update(ctx)
        ema = 1.0 if ema is None else 0.9 * ema + 0.1 * 0.05
        if ctx.reset is not None:
            fired_at = i
            break
    assert ema < 0.2 and fired_at is not None
    assert ctx.reset == RESET_SOURCE and kinds(ctx) == ["reset"]
    assert ctx.events[0].data["ema"] == pytest.approx(ema)
    assert guard.ema is None  # the EMA restarts after the reset


def test_collapse_guard_ignores_skipped_updates_and_gated_samples():
    guard = CollapseGuard(max_class_fraction=None)
    ctx = _update_ctx(0.0)
    ctx.skip_update = True
    guard.after_update(ctx)
    assert guard.ema is None and ctx.reset is None
    ctx = make_ctx(entropies=np.array([0.0, 1.0, np.nan]))
    ctx.proposed = source_params()
    ctx.weights[0] = 0.0
    guard.after_update(ctx)
    assert guard.ema == pytest.approx(1.0)


def test_collapse_guard_resets_on_one_class_window():
    guard = CollapseGuard(threshold=None, diversity_window=16, max_class_fraction=0.9)
    one_class = np.zeros((8, C))
    one_class[:, 3] = 5.0
    ctx = _update_ctx(1.0, logits=one_class)
    guard.before_update(ctx)
    guard.after_update(ctx)
    assert ctx.reset is None  # window not full yet
    state = roundtrip(guard)
    ctx = _update_ctx(1.0, batch_index=1, logits=one_class)
    state.before_update(ctx)
    state.after_update(ctx)
    assert ctx.reset == RESET_SOURCE
    assert ctx.events[0].data["top_class"] == 3 and ctx.events[0].data["fraction"] == 1.0


def test_collapse_guard_diverse_window_does_not_fire():
    guard = CollapseGuard(threshold=None, diversity_window=16)
    logits = np.eye(C)[np.arange(16) % C] * 5
    ctx = _update_ctx(1.0, logits=logits)
    guard.before_update(ctx)
    guard.after_update(ctx)
    assert ctx.reset is None and ctx.events == []
    with pytest.raises(ConfigError, match="enable at least one"):
        CollapseGuard(threshold=None, max_class_fraction=None)


# ---------------------------------------------------------------- ema_reset


def test_ema_reset_tracks_snapshot_and_fires_after_k_rising_batches():
    rail = EmaReset(tau=0.5, patience=3)
    rail.bind(make_env())
    theta = source_params()
    fired = None
    for i, level in enumerate([1.0, 1.1, 1.2, 1.3]):
        ctx = make_ctx(entropies=np.full(4, level), batch_index=i, params=theta)
        ctx.proposed = {k: v + 1.0 for k, v in theta.items()}
        rail.before_update(ctx)
        rail.after_update(ctx)
        if ctx.reset is not None:
            fired = ctx
            break
        rail.after_commit(ctx)
        theta = ctx.proposed
    assert fired is not None and fired.batch_index == 3
    assert fired.reset == RESET_SNAPSHOT and kinds(fired) == ["reset"]
    # phi = source weight 1, then three commits of theta = 2, 3, 4 with tau = 0.5
    expected_w = 0.125 * 1 + 0.125 * 2 + 0.25 * 3 + 0.5 * 4
    np.testing.assert_allclose(fired.reset_params["bn1.weight"], expected_w)
    assert fired.reset_params["bn1.weight"].dtype == np.float32
    assert rail.rising == 0
    # a fall resets the counter
    ctx = make_ctx(entropies=np.full(4, 0.5))
    rail.before_update(ctx)
    assert rail.rising == 0


def test_ema_reset_band_and_state_round_trip():
    rail = EmaReset(patience=None, band=[0.1, 1.0], band_momentum=0.0)
    rail.bind(make_env())
    ctx = make_ctx(entropies=np.full(4, 0.5))
    ctx.proposed = {k: v + 0.5 for k, v in source_params().items()}
    rail.before_update(ctx)
    rail.after_update(ctx)
    rail.after_commit(ctx)
    assert ctx.reset is None
    copy = roundtrip(rail)
    np.testing.assert_allclose(copy.phi["bn1.weight"], rail.phi["bn1.weight"])
    ctx = make_ctx(entropies=np.full(4, 2.0))
    ctx.proposed = source_params()
    copy.before_update(ctx)
    copy.after_update(ctx)
    assert ctx.reset == RESET_SNAPSHOT and ctx.events[0].data["value"] == pytest.approx(2.0)
    np.testing.assert_allclose(ctx.reset_params["bn1.bias"], 0.01 * 0.5)
    copy.on_reset(RESET_SOURCE)
    assert copy.phi == {} and copy.band_ema is None


# ---------------------------------------------------------------- stochastic_restore


def _restore_ctx(n: int = 20000) -> StepContext:
    ctx = make_ctx(params={"w": np.zeros(n, np.float32)})
    ctx.source = {"w": np.zeros(n, np.float32)}
    ctx.proposed = {"w": np.ones(n, np.float32)}
    return ctx


def test_stochastic_restore_restores_about_p_and_is_deterministic():
    results = []
    for _ in range(2):
        rail = StochasticRestore(p=0.05, seed=7)
        rail.bind(make_env(seed=3))
        ctx = _restore_ctx()
        rail.after_update(ctx)
        results.append(ctx.proposed["w"].copy())
        (event,) = ctx.events
        assert event.kind == "restore" and event.data["restored"] == int(np.sum(ctx.proposed["w"] == 0))
    np.testing.assert_array_equal(results[0], results[1])
    fraction = float(np.mean(results[0] == 0))
    assert 0.04 < fraction < 0.06
    other = StochasticRestore(p=0.05, seed=8)
    other.bind(make_env(seed=3))
    ctx = _restore_ctx()
    other.after_update(ctx)
    assert not np.array_equal(ctx.proposed["w"], results[0])


def test_stochastic_restore_rng_state_round_trips():
    rail = StochasticRestore(p=0.1)
    rail.bind(make_env())
    rail.after_update(_restore_ctx(100))
    copy = roundtrip(rail)
    a, b = _restore_ctx(1000), _restore_ctx(1000)
    rail.after_update(a)
    copy.after_update(b)
    np.testing.assert_array_equal(a.proposed["w"], b.proposed["w"])
    skipped = _restore_ctx(10)
    skipped.reject_update = True
    rail.after_update(skipped)
    assert skipped.events == [] and np.all(skipped.proposed["w"] == 1)


# ---------------------------------------------------------------- periodic_reset


def test_periodic_reset_fires_exactly_every_n_updates():
    rail = PeriodicReset(every=4)
    fired = []
    count = 0
    for i in range(14):
        ctx = make_ctx(batch_index=i, update_count=count)
        ctx.proposed = source_params()
        ctx.skip_update = i == 5  # a skipped step does not count
        rail.after_update(ctx)
        if ctx.reset is not None:
            assert ctx.reset == RESET_SOURCE
            fired.append(count + 1)
        if not ctx.skip_update:
            count += 1
    assert fired == [4, 8, 12]
    assert roundtrip(rail).last_reset_update == 12
    with pytest.raises(ConfigError, match="periodic_reset.every"):
        PeriodicReset(every=0)


# ---------------------------------------------------------------- nonfinite_guard


def test_nonfinite_guard_catches_loss_grads_and_proposed():
    guard = NonfiniteGuard()
    ctx = make_ctx(grads={"a": np.ones(3), "b": np.array([1.0, np.nan, np.inf])}, loss=0.5)
    guard.on_gradients(ctx)
    assert ctx.skip_update and kinds(ctx) == ["skip"]
    assert ctx.events[0].data == {"tensor": "b", "nonfinite": 2, "size": 3}
    ctx = make_ctx(grads={"a": np.ones(3)}, loss=float("nan"))
    guard.on_gradients(ctx)
    assert ctx.skip_update and ctx.events[0].data["tensor"] == "loss"
    ctx = make_ctx(grads={"a": np.ones(3)}, loss=0.1)
    guard.on_gradients(ctx)
    assert not ctx.skip_update and ctx.events == []
    ctx = make_ctx(proposed={"bn1.weight": np.array([1.0, np.nan, 1.0, 1.0], np.float32)})
    guard.after_update(ctx)
    assert ctx.reject_update and kinds(ctx) == ["reject"] and ctx.events[0].data["tensor"] == "bn1.weight"


# ---------------------------------------------------------------- trust_region


def _norm(d: dict[str, np.ndarray]) -> float:
    return float(np.linalg.norm(np.concatenate([v.ravel() for v in d.values()])))


def _diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: a[k].astype(np.float64) - b[k] for k in a}


def test_trust_region_scales_long_steps():
    rail = TrustRegion(max_distance=None, max_step=0.01)
    theta = source_params()
    ctx = make_ctx(params=theta, proposed={k: v + 0.1 for k, v in theta.items()})
    rail.after_update(ctx)
    step = _norm(_diff(ctx.proposed, theta)) / _norm(theta)
    assert step == pytest.approx(0.01, rel=1e-5)
    assert kinds(ctx) == ["clip"] and ctx.events[0].data["bound"] == "step"
    assert ctx.events[0].data["before"] == pytest.approx(0.1 * math.sqrt(8) / 2, rel=1e-5)
    # the direction is kept
    d = _diff(ctx.proposed, theta)
    np.testing.assert_allclose(d["bn1.weight"], d["bn1.bias"], rtol=1e-5)


def test_trust_region_projects_onto_ball_and_leaves_small_steps():
    rail = TrustRegion(max_distance=0.1, max_step=None)
    src = source_params()
    theta = {"bn1.weight": np.full(4, 1.3, np.float32), "bn1.bias": np.zeros(4, np.float32)}
    ctx = make_ctx(params=theta, proposed={k: v.copy() for k, v in theta.items()})
    rail.after_update(ctx)
    distance = _norm(_diff(ctx.proposed, src)) / _norm(src)
    assert distance == pytest.approx(0.1, rel=1e-5)
    assert ctx.events[0].data["bound"] == "distance" and ctx.events[0].data["before"] == pytest.approx(0.3, rel=1e-5)
    both = TrustRegion()
    ctx = make_ctx(proposed={k: v + 1e-3 for k, v in src.items()})
    both.after_update(ctx)
    assert ctx.events == []
    with pytest.raises(ConfigError, match="enable at least one"):
        TrustRegion(max_distance=None, max_step=None)


def test_trust_region_leaves_nonfinite_to_guard():
    ctx = make_ctx(proposed={"bn1.weight": np.full(4, np.nan, np.float32), "bn1.bias": np.zeros(4, np.float32)})
    TrustRegion().after_update(ctx)
    assert ctx.events == []
    NonfiniteGuard().after_update(ctx)
    assert ctx.reject_update


# ---------------------------------------------------------------- registry


def test_build_rails_from_names_and_mappings():
    rails = build_rails(["nonfinite_guard", {"name": "entropy_gate", "e0_fraction": 0.3}, {"name": "periodic_reset"}])
    assert [r.name for r in rails] == ["nonfinite_guard", "entropy_gate", "periodic_reset"]
    assert rails[1].e0_fraction == 0.3
    assert rails[1].spec == {"name": "entropy_gate", "e0": None, "e0_fraction": 0.3}
    assert build_rails([]) == []


EXPECTED_ORDER = [
    "signal_quality",
    "nonfinite_guard",
    "label_shift_guard",
    "batch_entropy_gate",
    "diversity_gate",
    "entropy_gate",
    "fisher_anchor",
    "stochastic_restore",
    "trust_region",
    "collapse_guard",
    "ema_reset",
    "periodic_reset",
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pipeline_order_is_fixed_by_declarations_not_by_config_order(seed):
    names = list(RAILS)
    np.random.default_rng(seed).shuffle(names)
    pipeline = RailPipeline(build_rails(names), frozenset(Target), "tent")
    assert pipeline.names == EXPECTED_ORDER
    assert set(RAILS) == set(EXPECTED_ORDER)


def test_pipeline_refuses_rails_the_method_cannot_host():
    with pytest.raises(ConfigError, match="entropy_gate acts on sample_weights.*offers batch, proposal, reset"):
        RailPipeline(build_rails(["entropy_gate"]), frozenset({Target.BATCH, Target.PROPOSAL, Target.RESET}), "bn")
    pipeline = RailPipeline(
        build_rails(["nonfinite_guard", "collapse_guard"]), frozenset({Target.PROPOSAL, Target.RESET}), "bn"
    )
    assert pipeline.names == ["nonfinite_guard", "collapse_guard"]


def test_build_rails_errors():
    with pytest.raises(ConfigError, match="valid rails: .*entropy_gate"):
        build_rails(["entropy_gat"])
    with pytest.raises(ConfigError, match=r"'trust_region'.*'max_dist'.*valid arguments: max_distance, max_step"):
        build_rails([{"name": "trust_region", "max_dist": 0.2}])
    with pytest.raises(ConfigError, match="no 'name'"):
        build_rails([{"beta": 1.0}])
    with pytest.raises(ConfigError, match="listed twice"):
        build_rails(["nonfinite_guard", "nonfinite_guard"])
    with pytest.raises(ConfigError, match="valid arguments: none"):
        build_rails([{"name": "nonfinite_guard", "strict": True}])
    with pytest.raises(ConfigError, match="stochastic_restore.p"):
        build_rails([{"name": "stochastic_restore", "p": 2}])


def test_every_rail_state_is_json_able():
    env = make_env()
    for rail in build_rails(list(RAILS)):
        rail.bind(env)
        tensors, meta = rail.state()
        json.dumps(meta)
        assert all(isinstance(v, np.ndarray) for v in tensors.values())


# ---------------------------------------------------------------- all rails in the real pipeline


class FlakyEngine:
    """An Engine (the protocol methods use) wrapping ONNX Runtime that puts a NaN into one gradient whenever
    the batch's content hash is divisible by 7, so the non-finite guard has work on real data."""

    def __init__(self, inner) -> None:
        self.inner, self.artifact, self.providers = inner, inner.artifact, inner.providers

    def output_names(self, which: str) -> list[str]:
        return self.inner.output_names(which)

    def infer(self, x, params, bn_alpha, outputs=None):
        return self.inner.infer(x, params, bn_alpha, outputs)

    def adapt(self, x, params, bn_alpha, entropy_weight, ce_weight, outputs=None):
        out = self.inner.adapt(x, params, bn_alpha, entropy_weight, ce_weight, outputs)
        if int(np.abs(x).sum() * 100) % 7 == 0:
            name = next(iter(self.artifact.grad_names.values()))
            out[name] = out[name].copy()
            out[name][0] = np.nan
        return out


ALL_RAILS = [
    {"name": "periodic_reset", "every": 9},
    {"name": "ema_reset", "patience": 3},
    {"name": "collapse_guard", "diversity_window": 64},
    {"name": "stochastic_restore", "p": 0.1},
    {"name": "trust_region", "max_distance": 0.05, "max_step": 0.005},
    {"name": "fisher_anchor", "beta": 100.0},
    {"name": "entropy_gate", "e0_fraction": 0.4},
    {"name": "batch_entropy_gate", "max_mean_fraction": 0.3},
    "nonfinite_guard",
]


def _adapter(art):
    from edgetta.engines import OrtEngine
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    config = load_config(method="tent", method_args={"optimizer": "adam", "lr": 1e-2}, rails=ALL_RAILS)
    adapter = Adapter(art, config, engine=FlakyEngine(OrtEngine(art, config.engine)))
    assert isinstance(adapter.engine, __import__("edgetta.engines", fromlist=["Engine"]).Engine)
    return adapter


def test_all_rails_in_the_real_pipeline_resume_identically_from_a_checkpoint(tmp_path):
    from pathlib import Path

    from edgetta.contract import load_artifact

    art = load_artifact(Path(__file__).parent / "assets" / "fmnist_resnet_gn")
    with np.load(Path(__file__).parents[1] / "edgetta" / "assets" / "demo_stream.npz") as data:
        x = ((data["images"].astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None].astype(np.float32)
    batches = [x[i : i + 24] for i in range(0, 24 * 80, 24)]

    def events(results) -> list[dict]:
        return [json.loads(json.dumps(e.to_json())) for r in results for e in r.events]

    straight = _adapter(art)
    first = [straight.process(b) for b in batches[:40]]
    straight.save(tmp_path / "ck.safetensors")
    rest = [straight.process(b) for b in batches[40:]]
    resumed = _adapter(art)
    resumed.restore(tmp_path / "ck.safetensors")
    resumed_rest = [resumed.process(b) for b in batches[40:]]
    for key in straight.state.params:
        np.testing.assert_array_equal(straight.state.params[key], resumed.state.params[key])
    resumed_events = [e for e in events(resumed_rest) if e["rail"] != "runtime"]
    assert events(rest) == resumed_events
    seen = {(e["rail"], e["kind"]) for e in events(first + rest)}
    for expected in [
        ("nonfinite_guard", "skip"),
        ("stochastic_restore", "restore"),
        ("periodic_reset", "reset"),
        ("trust_region", "clip"),
        ("entropy_gate", "gate"),
        ("batch_entropy_gate", "skip"),
    ]:
        assert expected in seen, (expected, sorted(seen))


def test_config_error_messages_name_the_key():
    with pytest.raises(ConfigError, match=r"collapse_guard\.threshold.*1\.0e-3"):
        build_rails([{"name": "collapse_guard", "threshold": "1e-3"}])
    with pytest.raises(ConfigError, match="must be a list"):
        build_rails("entropy_gate")
    with pytest.raises(ConfigError, match=r"ema_reset\.band"):
        build_rails([{"name": "ema_reset", "band": [1.0]}])
    with pytest.raises(ConfigError, match=r"collapse_guard\.diversity_window"):
        CollapseGuard(diversity_window=0)
