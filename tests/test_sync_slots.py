"""Applying bundles on the device through A/B slots: commit, health-check rollback, crash recovery, the
applied version across restarts, and the adapter's new source parameters (docs/bundles.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgetta.contract import load_artifact
from edgetta.errors import ConfigError, DataError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config
from edgetta.sync.bundle import create_bundle, verify_bundle
from edgetta.sync.slots import (
    HealthPolicy,
    SlotStore,
    apply_bundle,
    health_check,
    resume,
)

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "edgetta" / "assets" / "fmnist_resnet_bn"
LAST = ("layer3.0.bn2.weight", "layer3.0.bn2.bias", "layer3.0.shortcut.1.weight", "layer3.0.shortcut.1.bias")


@pytest.fixture(scope="module")
def artifact():
    return load_artifact(ASSET)


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    with np.load(ASSET.parent / "demo_stream.npz", allow_pickle=False) as data:
        images = data["images"][:256]
    return (((images.astype(np.float32) / 255.0 - 0.286) / 0.353)[:, None]).astype(np.float32)


def scaled(artifact, factor: float) -> dict[str, np.ndarray]:
    """A healthy update: every trainable weight scaled by ``factor``."""
    return {n: (artifact.params[n] * factor).astype(np.float32) for n in artifact.trainable_names}


def make(artifact, key, params, version: int) -> bytes:
    return create_bundle(artifact, params, version=version, private_key=key)


def apply(store, adapter, key, data, window, **kwargs):
    return apply_bundle(data, store=store, adapter=adapter, trusted_keys=[key.public_key()], window=window, **kwargs)


@pytest.fixture
def device(tmp_path, artifact):
    adapter = Adapter(artifact, load_config(preset="frozen"))
    return adapter, SlotStore(tmp_path / "slots", artifact)


# -- commit ------------------------------------------------------------------------------------------------
def test_commit_switches_slot_and_source(device, artifact, key, x):
    adapter, store = device
    before = adapter.process(x[:64]).logits
    good = scaled(artifact, 1.02)
    result = apply(store, adapter, key, make(artifact, key, good, 5), x[:64])
    assert result.committed and result.code == "ok" and result.version == 5
    assert store.active == "a" and store.applied_version == 5 and adapter.source_version == 5
    for name, value in good.items():
        np.testing.assert_array_equal(adapter.state.source[name], value)
        np.testing.assert_array_equal(adapter.state.params[name], value)
    untouched = "bn1.running_mean"
    np.testing.assert_array_equal(adapter.state.source[untouched], artifact.params[untouched])
    after = adapter.process(x[:64])
    assert not np.allclose(after.logits, before)
    assert any(e.kind == "source" and e.data["version"] == 5 for e in after.events)
    state = json.loads(store.state_path.read_text())
    assert state["active"] == "a" and state["slots"]["a"]["version"] == 5 and state["last"]["outcome"] == "committed"

    second = apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.03), 6), x[:64])
    assert second.committed and store.active == "b" and store.applied_version == 6
    assert json.loads(store.state_path.read_text())["slots"]["a"]["version"] == 5  # the previous slot is kept


def test_bundles_are_not_cumulative(device, artifact, key, x):
    adapter, store = device
    apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.02), 1), x[:64])
    only_bias = {"bn1.bias": artifact.params["bn1.bias"] + 0.01}
    assert apply(store, adapter, key, make(artifact, key, only_bias, 2), x[:64]).committed
    np.testing.assert_array_equal(adapter.state.source["bn1.weight"], artifact.params["bn1.weight"])
    np.testing.assert_array_equal(adapter.state.source["bn1.bias"], only_bias["bn1.bias"])


# -- health check: rollback with a reason, device keeps its last good parameters ---------------------------------
def harmful(artifact, kind: str) -> dict[str, np.ndarray]:
    if kind == "entropy":  # the last block shrunk: logits flatten, entropy rises
        return {n: (artifact.params[n] * 0.3).astype(np.float32) for n in LAST}
    if kind == "non_finite_output":  # finite, but the outputs overflow
        return {"bn1.weight": np.full(16, 3e38, np.float32)}
    # collapse: the last block's output made constant, so every input gets the same class
    return {n: np.full(64, 10.0 if n.endswith("bn2.bias") else 0.0, np.float32) for n in LAST}


@pytest.mark.parametrize("kind", ["entropy", "non_finite_output", "collapse"])
def test_unhealthy_bundle_rolls_back_and_device_keeps_last_good(device, artifact, key, x, kind):
    adapter, store = device
    good = scaled(artifact, 1.02)
    assert apply(store, adapter, key, make(artifact, key, good, 1), x[:64]).committed
    before = adapter.process(x[64:128]).logits
    policy = HealthPolicy(max_entropy_ratio=50.0) if kind == "collapse" else HealthPolicy()
    result = apply(store, adapter, key, make(artifact, key, harmful(artifact, kind), 2), x[:64], policy=policy)
    assert result.outcome == "rolled_back" and result.code == kind and result.version == 2
    assert result.reason and (kind != "collapse" or "one class" in result.reason)
    assert store.active == "a" and store.applied_version == 1 and adapter.source_version == 1
    assert store.last["outcome"] == "rolled_back" and store.last["code"] == kind
    # same parameters; the engine may run a folded copy of the graph, so equal to float32 rounding, not bitwise
    np.testing.assert_allclose(adapter.process(x[64:128]).logits, before, rtol=1e-5, atol=2e-5)
    reopened = SlotStore(store.root, artifact)
    assert reopened.recovery.version == 1 and reopened.applied_version == 1
    np.testing.assert_array_equal(reopened.recovery.params["bn1.weight"], good["bn1.weight"])


def test_too_few_recent_inputs_defers(device, artifact, key, x):
    adapter, store = device
    result = apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.02), 1), x[:5])
    assert result.outcome == "rolled_back" and result.code == "window_too_small"
    assert store.applied_version is None and adapter.source_version is None


def test_rejected_bundle_is_recorded_and_changes_nothing(device, artifact, key, x):
    adapter, store = device
    data = make(artifact, key, scaled(artifact, 1.02), 3)
    assert apply(store, adapter, key, data, x[:64]).committed
    before = adapter.process(x[:64]).logits
    replay = apply(store, adapter, key, data, x[:64])
    assert replay.outcome == "rejected" and replay.code == "stale_version"
    stranger = Ed25519PrivateKey.generate()
    forged = apply(store, adapter, key, make(artifact, stranger, scaled(artifact, 0.5), 9), x[:64])
    assert forged.outcome == "rejected" and forged.code == "unknown_key"
    assert store.last["outcome"] == "rejected" and store.last["code"] == "unknown_key"
    assert store.applied_version == 3
    np.testing.assert_allclose(adapter.process(x[:64]).logits, before, rtol=1e-5, atol=2e-5)


def test_health_check_on_synthetic_logits():
    rng = np.random.default_rng(0)
    current = rng.normal(0, 3, (32, 10)).astype(np.float32)
    assert health_check(current, current).ok
    assert health_check(current, current * 1.5).ok  # more confident
    assert health_check(current, current * 0.2).code == "entropy"
    nan = current.copy()
    nan[3, 2] = np.nan
    assert health_check(current, nan).code == "non_finite_output"
    collapsed = np.zeros_like(current)
    collapsed[:, 4] = 20.0
    assert health_check(current, collapsed).code == "collapse"
    already = current.copy()
    already[:, 4] += 100.0  # the current parameters predict one class already: not the bundle's doing
    assert health_check(already, collapsed).ok
    assert health_check(current[:4], current[:4]).code == "window_too_small"


@pytest.mark.parametrize(
    "kwargs", [{"min_rows": 0}, {"max_entropy_ratio": 0.5}, {"entropy_slack": -1}, {"max_class_fraction": 0}]
)
def test_health_policy_refuses_bad_values(kwargs):
    with pytest.raises(ConfigError):
        HealthPolicy(**kwargs)


# -- crashes and restarts -----------------------------------------------------------------------------------
def test_crash_after_staging_recovers_previous_slot(device, artifact, key, x):
    adapter, store = device
    good = scaled(artifact, 1.02)
    assert apply(store, adapter, key, make(artifact, key, good, 1), x[:64]).committed
    newer = verify_bundle(
        make(artifact, key, scaled(artifact, 0.9), 2), artifact_dir=artifact, trusted_keys=[key], applied_version=1
    )
    staged = store.stage(newer)  # ... and the device loses power before the commit
    assert staged.slot == "b" and store.slot_path("b").is_file()
    (store.root / ".state.json.123.tmp").write_bytes(b'{"half": ')  # a state write cut short
    after = SlotStore(store.root, artifact)
    assert after.recovery.version == 1 and after.active == "a" and after.applied_version == 1
    np.testing.assert_array_equal(after.recovery.params["bn1.weight"], good["bn1.weight"])
    assert not list(store.root.glob(".*.tmp"))


def test_crash_after_commit_before_checkpoint_resumes_new_source(tmp_path, artifact, key, x):
    adapter = Adapter(artifact, load_config(preset="frozen"))
    adapter.save(tmp_path / "adapter.safetensors")  # the last checkpoint: no bundle yet
    store = SlotStore(tmp_path / "slots", artifact)
    good = scaled(artifact, 1.02)
    assert apply(store, adapter, key, make(artifact, key, good, 4), x[:64]).committed
    # power loss before the next checkpoint: a new process restores the old checkpoint, then the slots
    restarted = Adapter(artifact, load_config(preset="frozen"))
    restarted.restore(tmp_path / "adapter.safetensors")
    assert restarted.source_version is None
    assert resume(SlotStore(tmp_path / "slots", artifact), restarted) == 4
    assert restarted.source_version == 4
    np.testing.assert_array_equal(restarted.state.params["bn1.weight"], good["bn1.weight"])
    np.testing.assert_allclose(restarted.process(x[:64]).logits, adapter.process(x[:64]).logits, rtol=1e-5, atol=2e-5)


def test_damaged_active_slot_falls_back_to_previous(device, artifact, key, x):
    adapter, store = device
    first = scaled(artifact, 1.02)
    assert apply(store, adapter, key, make(artifact, key, first, 1), x[:64]).committed
    assert apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.03), 2), x[:64]).committed
    path = store.slot_path("b")
    path.write_bytes(path.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    after = SlotStore(store.root, artifact)
    assert after.recovery.version == 1 and after.active == "a" and "damaged" in after.recovery.note
    assert after.applied_version == 2  # rollback protection survives
    np.testing.assert_array_equal(after.recovery.params["bn1.weight"], first["bn1.weight"])


def test_full_disk_while_staging_or_committing_changes_nothing(device, artifact, key, x, monkeypatch):
    import edgetta.sync.slots as slots

    adapter, store = device
    assert apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.02), 1), x[:64]).committed
    before = adapter.process(x[:64]).logits
    on_disk = store.state_path.read_bytes()
    real = slots.write_atomic

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slots, "write_atomic", full)
    result = apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.03), 2), x[:64])
    assert result.outcome == "rolled_back" and result.code == "stage_failed" and "No space" in result.reason

    def state_write_fails(path, data):
        if Path(path).name == "state.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(slots, "write_atomic", state_write_fails)
    result = apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.03), 2), x[:64])
    assert result.outcome == "rolled_back" and result.code == "commit_failed"
    assert store.active == "a" and store.applied_version == 1 and adapter.source_version == 1
    assert store.state_path.read_bytes() == on_disk
    np.testing.assert_allclose(adapter.process(x[:64]).logits, before, rtol=1e-5, atol=2e-5)
    monkeypatch.setattr(slots, "write_atomic", real)
    assert SlotStore(store.root, artifact).recovery.version == 1


def test_unreadable_slot_state_is_a_clear_error(tmp_path, artifact):
    from edgetta.errors import CheckpointError

    folder = tmp_path / "slots"
    store = SlotStore(folder, artifact)
    store.note("rejected", None, "expired", "test")
    state = json.loads(store.state_path.read_text())
    for bad in ({**state, "active": "c"}, {**state, "applied_version": "7"}, {"format": "other"}):
        store.state_path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="delete it|not an edgetta slot state"):
            SlotStore(folder, artifact)


def test_slots_for_another_base_start_again(tmp_path, device, artifact, key, x):
    adapter, store = device
    assert apply(store, adapter, key, make(artifact, key, scaled(artifact, 1.02), 1), x[:64]).committed
    state = json.loads(store.state_path.read_text())
    state["base_sha256"] = "0" * 64
    store.state_path.write_text(json.dumps(state))
    after = SlotStore(store.root, artifact)
    assert after.recovery.version is None and after.applied_version is None and "another base" in after.recovery.note


CHILD = r"""
import sys, numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgetta.contract import load_artifact
from edgetta.sync.bundle import create_bundle, verify_bundle
from edgetta.sync.slots import SlotStore
artifact = load_artifact(sys.argv[1])
key = Ed25519PrivateKey.generate()
store = SlotStore(sys.argv[2], artifact)
version = store.applied_version or 0
while True:
    version += 1
    params = {n: artifact.params[n] * np.float32(1 + version / 1000) for n in artifact.trainable_names}
    data = create_bundle(artifact, params, version=version, private_key=key)
    bundle = verify_bundle(data, artifact_dir=artifact, trusted_keys=[key], applied_version=store.applied_version)
    store.commit(store.stage(bundle))
    print(version, flush=True)
"""


def test_kill_during_applies_leaves_a_consistent_slot(tmp_path, artifact):
    slots = tmp_path / "slots"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ASSET), str(slots)], env=env, stdout=subprocess.PIPE, text=True
        )
        child.stdout.readline()  # at least one apply of this run committed
        time.sleep(float(rng.uniform(0.0, 0.05)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        store = SlotStore(slots, artifact)
        version = store.recovery.version
        assert version is not None and version == store.applied_version and version > seen
        expected = artifact.params["bn1.weight"] * np.float32(1 + version / 1000)
        np.testing.assert_array_equal(store.recovery.params["bn1.weight"], expected)
        assert not list(slots.glob(".*.tmp"))
        seen = version


# -- the adapter's new source parameters ------------------------------------------------------------------------
def test_set_source_params_is_the_new_reset_target(artifact, x):
    adapter = Adapter(artifact, load_config(method="tent", method_args={"optimizer": "adam", "lr": 1e-3}))
    new = scaled(artifact, 1.05)
    event = adapter.set_source_params(new, version=7)
    assert event.kind == "source" and adapter.source_version == 7
    for _ in range(3):
        adapter.process(x[:64])
    assert adapter.state.update_count > 0
    assert not np.allclose(adapter.state.params["bn1.weight"], new["bn1.weight"])  # gradient adaptation continued
    adapter.reset("test")
    np.testing.assert_array_equal(adapter.state.params["bn1.weight"], new["bn1.weight"])


def test_set_source_params_moves_the_fisher_anchor(artifact):
    adapter = Adapter(artifact, load_config(preset="eata"))
    adapter.set_source_params(scaled(artifact, 1.05))
    anchors = [r for r in adapter.rails.rails if r.name == "fisher_anchor"]
    assert anchors, "the bundled artifact has a Fisher diagonal"
    np.testing.assert_allclose(anchors[0]._anchor["bn1.weight"], artifact.params["bn1.weight"] * 1.05, rtol=1e-6)


def test_set_source_params_refuses_foreign_tensors(artifact):
    adapter = Adapter(artifact, load_config(preset="frozen"))
    with pytest.raises(DataError, match="not a parameter"):
        adapter.set_source_params({"fc.weight": np.ones(3, np.float32)})
    with pytest.raises(DataError, match="shape"):
        adapter.set_source_params({"bn1.weight": np.ones(3, np.float32)})
    with pytest.raises(DataError, match="finite"):
        adapter.set_source_params({"bn1.weight": np.full(16, np.nan, np.float32)})
    assert adapter.source_version is None


def test_checkpoint_keeps_source_and_version(tmp_path, artifact, x):
    config = load_config(method="tent", method_args={"optimizer": "adam", "lr": 1e-3})
    adapter = Adapter(artifact, config)
    new = scaled(artifact, 1.05)
    adapter.set_source_params(new, version=3)
    adapter.process(x[:64])
    adapter.save(tmp_path / "ck.safetensors")
    other = Adapter(artifact, config)
    other.restore(tmp_path / "ck.safetensors")
    assert other.source_version == 3
    np.testing.assert_array_equal(other.state.source["bn1.weight"], new["bn1.weight"])
    np.testing.assert_array_equal(other.state.params["bn1.weight"], adapter.state.params["bn1.weight"])
    other.reset()
    np.testing.assert_array_equal(other.state.params["bn1.weight"], new["bn1.weight"])
    # a checkpoint from before any bundle brings back the artifact's own source
    plain = Adapter(artifact, config)
    plain.save(tmp_path / "plain.safetensors")
    other.restore(tmp_path / "plain.safetensors")
    assert other.source_version is None
    np.testing.assert_array_equal(other.state.source["bn1.weight"], artifact.params["bn1.weight"])


def test_keys_bundles_and_slots_never_import_torch(tmp_path):
    from tests.conftest import run_without_torch

    body = f"""
import numpy as np
from edgetta.contract import load_artifact
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config
from edgetta.sync.bundle import create_bundle
from edgetta.sync.keys import generate_keypair, load_private_key
from edgetta.sync.slots import SlotStore, apply_bundle
artifact = load_artifact({str(ASSET)!r})
private, public = generate_keypair({str(tmp_path / "k")!r})
params = {{n: artifact.params[n] * np.float32(1.01) for n in artifact.trainable_names}}
data = create_bundle(artifact, params, version=1, private_key=load_private_key(private))
adapter = Adapter(artifact, load_config(preset="frozen"))
window = np.random.default_rng(0).normal(size=(32, 1, 28, 28)).astype(np.float32)
store = SlotStore({str(tmp_path / "slots")!r}, artifact)
result = apply_bundle(data, store=store, adapter=adapter, trusted_keys=[public], window=window)
rc = 0 if result.committed else 1
"""
    result = run_without_torch(body, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
