"""``edgetta keys generate``, ``edgetta bundle create`` and ``edgetta bundle verify`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "edgetta" / "assets" / "fmnist_resnet_bn"


def edgetta(*args: str | Path) -> tuple[int, dict | None, str]:
    """Run ``python -m edgetta.cli ARGS``: (exit code, the JSON line on stdout or None, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "edgetta.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) <= 1, proc.stdout
    return proc.returncode, json.loads(lines[0]) if lines else None, proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two key pairs (old and new), a parameters file and a bundle signed by the old key."""
    root = tmp_path_factory.mktemp("cli")
    from edgetta.contract import load_artifact

    artifact = load_artifact(ASSET)
    params = {n: artifact.params[n] * np.float32(1.01) for n in artifact.trainable_names}
    save_file(params, str(root / "params.safetensors"))
    keys = {}
    for name in ("old", "new"):
        code, out, err = edgetta("keys", "generate", "--out", root / name)
        assert code == 0, err
        keys[name] = out
    code, out, err = edgetta(
        "bundle", "create", "--artifact", ASSET, "--params", root / "params.safetensors", "--version", 3,
        "--key", keys["old"]["private"], "--expires-in", 3600, "--out", root / "v3.bundle",
    )  # fmt: skip
    assert code == 0, err
    return root, keys, out


def test_keys_generate(setup):
    root, keys, _ = setup
    for info in keys.values():
        private, public = Path(info["private"]), Path(info["public"])
        assert private.stat().st_mode & 0o777 == 0o600
        assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
        assert len(info["key_id"]) == 16
    assert keys["old"]["key_id"] != keys["new"]["key_id"]
    code, out, err = edgetta("keys", "generate", "--out", root / "old")
    assert code == 2 and out is None and "already exists" in err


def test_bundle_create(setup):
    root, keys, out = setup
    assert out["version"] == 3 and out["key_id"] == keys["old"]["key_id"] and out["tensors"] == 18
    assert out["bytes"] == (root / "v3.bundle").stat().st_size


def test_bundle_verify_accepts_and_refuses(setup):
    root, keys, _ = setup
    bundle = root / "v3.bundle"
    code, out, _ = edgetta("bundle", "verify", bundle, "--artifact", ASSET, "--trust", keys["old"]["public"])
    assert code == 0 and out["ok"] is True and out["version"] == 3 and out["key_id"] == keys["old"]["key_id"]
    assert "bn1.weight" in out["tensors"] and out["expires"] - out["created"] == 3600
    code, out, _ = edgetta(
        "bundle", "verify", bundle, "--artifact", ASSET, "--trust", keys["old"]["public"], "--applied-version", 3
    )
    assert code == 1 and out["ok"] is False and out["code"] == "stale_version" and "not newer" in out["reason"]
    damaged = root / "damaged.bundle"
    damaged.write_bytes(bundle.read_bytes()[:-20])
    code, out, _ = edgetta("bundle", "verify", damaged, "--artifact", ASSET, "--trust", keys["old"]["public"])
    assert code == 1 and out["code"] == "truncated"


def test_key_rotation_from_the_command_line(setup):
    root, keys, _ = setup
    bundle = root / "v3.bundle"
    old, new = ("--trust", keys["old"]["public"]), ("--trust", keys["new"]["public"])
    for both in (old + new, new + old):  # the new key trusted alongside the old, in either order
        code, out, _ = edgetta("bundle", "verify", bundle, "--artifact", ASSET, *both)
        assert code == 0 and out["ok"]
    code, out, _ = edgetta("bundle", "verify", bundle, "--artifact", ASSET, "--trust", keys["new"]["public"])
    assert code == 1 and out["code"] == "unknown_key" and keys["old"]["key_id"] in out["reason"]


def test_bundle_create_refuses_mismatched_params(setup):
    root, keys, _ = setup
    save_file({"bn1.weight": np.ones(3, np.float32)}, str(root / "bad.safetensors"))
    code, out, err = edgetta(
        "bundle", "create", "--artifact", ASSET, "--params", root / "bad.safetensors", "--version", 4,
        "--key", keys["old"]["private"], "--out", root / "bad.bundle",
    )  # fmt: skip
    assert code == 2 and out is None and "shape" in err and not (root / "bad.bundle").exists()
    assert "Traceback" not in err
