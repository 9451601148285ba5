"""Label-shift guard: label-correlated batches normalised with robust statistics; covariate gain kept.

The bundled demo stream sorted by label inside each noise phase is the label-correlated stream; the same
phases in their original (i.i.d.) order are the covariate-shift stream, and the fog phase is the covariate
shift on which the source model is confidently wrong (the entropy test alone mistakes it for label shift).
Each test has a no-guard (or entropy-test-only) control.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgetta
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config

ART = Path(edgetta.__file__).parent / "assets" / "fmnist_resnet_bn"
GUARD = "label_shift_guard"
PHASES = (1, 3)  # gaussian noise and impulse noise, severity 5
FOG = 4
GUARDED_PRESETS = ("bn", "tent", "eata", "sar", "safe_tent", "deyo", "stamp")


def demo_phases(wanted: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(ART.parent / "demo_stream.npz", allow_pickle=False) as data:
        images, labels, phase = data["images"], data["labels"], data["phase"]
    mask = np.isin(phase, wanted)
    x = ((images[mask].astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None].astype(np.float32)
    return x, labels[mask].astype(np.int64), phase[mask]


@pytest.fixture(scope="module")
def phases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return demo_phases(PHASES)


def rail_name(rail: str | dict) -> str:
    return rail if isinstance(rail, str) else rail["name"]


def error(preset: str, x: np.ndarray, y: np.ndarray, guard: bool | dict = True) -> tuple[float, Adapter]:
    """Error of a shipped preset as shipped, without its guard (False) or with the guard's arguments (dict)."""
    config = load_config(preset=preset)
    if guard is not True:
        rails = [r for r in config.rails if rail_name(r) != GUARD]
        if isinstance(guard, dict):
            rails.insert(1, {"name": GUARD, **guard})
        config = load_config(preset=preset, rails=rails)
    adapter = Adapter(ART, config)
    preds = np.concatenate([adapter.process(x[i : i + 64]).preds for i in range(0, len(x), 64)])
    return float(100 * np.mean(preds != y)), adapter


def label_sorted(x, y, phase):
    order = np.lexsort((y, phase))  # by phase, then by label inside the phase
    return x[order], y[order]


@pytest.mark.parametrize("preset", ["bn", "tent"])
def test_guarded_presets_stay_near_frozen_on_a_label_sorted_stream(phases, preset):
    x, y = label_sorted(*phases)
    frozen, _ = error("frozen", x, y)
    guarded, adapter = error(preset, x, y)
    unguarded, _ = error(preset, x, y, guard=False)
    numbers = f"frozen {frozen:.1f}, {preset} without guard {unguarded:.1f}, with guard {guarded:.1f}"
    # The control: batches of 2-3 classes (32 images per class) already cost the unguarded preset > 8 points.
    assert unguarded > frozen + 8, numbers
    assert guarded <= frozen + 2, numbers
    assert adapter.event_counts["statistics"] > 0


def test_covariate_shift_gain_is_kept(phases):
    x, y, _ = phases
    frozen, _ = error("frozen", x, y)
    plain, _ = error("bn", x, y, guard=False)
    guarded, adapter = error("bn", x, y)
    numbers = f"frozen {frozen:.1f}, bn without guard {plain:.1f}, with guard {guarded:.1f}"
    assert plain < frozen - 10, numbers  # BN refresh helps on these phases
    assert guarded <= plain + 2, numbers
    assert adapter.event_counts["statistics"] <= 1


def test_a_confidently_wrong_covariate_shift_keeps_batch_statistics():
    """Fog: BN raises the mean entropy (the source is confidently wrong), but the robust statistics misfit."""
    x, y, _ = demo_phases((FOG,))
    frozen, _ = error("frozen", x, y)
    plain, _ = error("bn", x, y, guard=False)
    guarded, adapter = error("bn", x, y)
    entropy_only, control = error("bn", x, y, guard={"max_misfit": 1e9})
    numbers = f"frozen {frozen:.1f}, bn {plain:.1f}, guarded {guarded:.1f}, entropy test only {entropy_only:.1f}"
    assert plain < frozen - 10, numbers
    # The control: the entropy test alone falls back to the source statistics and loses the gain.
    assert entropy_only > plain + 10 and control.event_counts["statistics"] > 0, numbers
    assert guarded <= plain + 2, numbers
    assert adapter.event_counts["statistics"] == 0, numbers
    assert adapter.event_counts["statistics_kept"] > 0, numbers


def test_a_stream_mixing_corruptions_keeps_batch_statistics():
    """Shuffled noise, blur and fog: mixed batches raise the entropy, but their deep variance does not drop."""
    x, y, _ = demo_phases((1, 2, 3, 4))
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    plain, _ = error("bn", x, y, guard=False)
    guarded, adapter = error("bn", x, y)
    entropy_only, control = error("bn", x, y, guard={"variance_drop": 0.0, "max_misfit": 1e9})
    numbers = f"bn {plain:.1f}, guarded {guarded:.1f}, entropy test only {entropy_only:.1f}"
    assert guarded <= plain + 1, numbers
    # The control: the entropy test alone replaces some mixed batches; the deep-variance test keeps them.
    assert adapter.event_counts["statistics"] == 0 < control.event_counts["statistics"], numbers


def test_the_fallback_is_an_event_with_its_signals(phases):
    x, y = label_sorted(*phases)
    adapter = Adapter(ART, load_config(preset="bn"))
    events = [e for i in range(0, 192, 64) for e in adapter.process(x[i : i + 64]).events if e.kind == "statistics"]
    assert events and all(e.rail == GUARD for e in events)
    for e in events:
        assert e.data["entropy_own"] - e.data["entropy_robust"] > 0.03 * np.log(10)
        assert e.data["log_variance_ratio"] < -0.1
        assert e.data["misfit"] <= 0.75


@pytest.mark.parametrize("preset", ["tent", "eata", "sar", "deyo"])
def test_a_replaced_batch_never_updates(phases, preset):
    x, _ = label_sorted(*phases)
    adapter = Adapter(ART, load_config(preset=preset))
    held = 0
    for i in range(0, 192, 64):
        before = adapter.totals["backward_passes"]
        result = adapter.process(x[i : i + 64])
        if any(e.kind == "statistics" for e in result.events):
            held += 1
            assert not result.updated and adapter.totals["backward_passes"] == before
    assert held


@pytest.mark.parametrize("preset", GUARDED_PRESETS)
def test_presets_that_use_batch_statistics_include_the_guard(preset):
    config = load_config(preset=preset)
    assert config.method_args.get("bn_alpha", 1.0) > 0
    assert GUARD in [rail_name(r) for r in config.rails]
    assert GUARD in Adapter(ART, config).rails.names


@pytest.mark.parametrize("preset", ["frozen", "bn_ema", "lame", "foa"])
def test_presets_without_batch_statistics_leave_it_out(preset):
    assert GUARD not in [rail_name(r) for r in load_config(preset=preset).rails]


def test_robust_statistics_are_checkpointed_exactly(phases, tmp_path):
    x, y = label_sorted(*phases)
    config = load_config(preset="bn", rails=[{"name": GUARD, "momentum": 0.5}])
    a = Adapter(ART, config)
    for i in range(0, 320, 64):
        a.process(x[i : i + 64])
    a.save(tmp_path / "s.safetensors")
    b = Adapter(ART, config)
    b.restore(tmp_path / "s.safetensors")
    rail_a, rail_b = a.rails.rails[0], b.rails.rails[0]
    assert rail_a.replaced == rail_b.replaced > 0
    moved = [k for k in rail_a.robust if not np.array_equal(rail_a.robust[k], rail_a.source[k])]
    assert moved and all(np.array_equal(rail_a.robust[k], rail_b.robust[k]) for k in rail_a.robust)
    rest = x[320:640]
    pa = [a.process(rest[i : i + 64]).preds for i in range(0, len(rest), 64)]
    pb = [b.process(rest[i : i + 64]).preds for i in range(0, len(rest), 64)]
    assert all(np.array_equal(p, q) for p, q in zip(pa, pb))


def test_models_without_batchnorm_drop_the_guard_with_an_event():
    gn = Path(__file__).parent / "assets" / "fmnist_resnet_gn"
    adapter = Adapter(gn, load_config(preset="safe_tent"))
    assert GUARD not in adapter.rails.names
    assert any(name == GUARD for name, _ in adapter.dropped)
