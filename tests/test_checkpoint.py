"""Tests for edgetta.runtime.checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgetta.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ART = "a" * 64


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "params/layer1.bn.weight": rng.normal(size=16).astype(np.float32),
        "exp_avg/layer1.bn.weight": rng.normal(size=(4, 4)),
        "counter": np.array(7, dtype=np.int64),
    }


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    meta = {"step": 12, "optimizer": {"optimizer": "adam", "steps": {"w": 3}}, "entropy_ema": 0.25}
    save_checkpoint(path, _tensors(), meta, artifact_id=ART)
    tensors, got_meta = load_checkpoint(path, artifact_id=ART)
    assert got_meta == meta
    assert set(tensors) == set(_tensors())
    for key, value in _tensors().items():
        assert tensors[key].dtype == value.dtype
        np.testing.assert_array_equal(tensors[key], value)
    assert load_checkpoint(path, artifact_id=None)[1] == meta  # no artifact check requested
    save_checkpoint(path, {}, {}, artifact_id=ART)  # overwrite in place, empty state is fine
    assert load_checkpoint(path, ART) == ({}, {})


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    save_checkpoint(path, _tensors(), {"n": 1}, ART)
    save_checkpoint(path, _tensors(), {"n": 2}, ART)
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]
    with pytest.raises(TypeError):  # meta that is not JSON-able fails before anything is written
        save_checkpoint(path, _tensors(), {"bad": object()}, ART)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, _tensors(), {"version": 3}, ART)
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]
    assert load_checkpoint(path, ART)[1] == {"n": 2}


def test_missing_truncated_and_random_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", ART)
    path = tmp_path / "state.safetensors"
    save_checkpoint(path, _tensors(), {}, ART)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, ART)
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, ART)
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError):
        load_checkpoint(path, ART)
    assert issubclass(CheckpointError, ValueError)


def test_foreign_future_and_mismatched_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(plain))
    with pytest.raises(CheckpointError, match="not an edgetta checkpoint"):
        load_checkpoint(plain, ART)
    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(other), metadata={"edgetta": json.dumps({"format": "x"})})
    with pytest.raises(CheckpointError, match="not an edgetta checkpoint"):
        load_checkpoint(other, ART)
    future = tmp_path / "future.safetensors"
    header = {"format": "edgetta.checkpoint", "version": 99, "artifact_sha256": ART}
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(future), metadata={"edgetta": json.dumps(header)})
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(future, ART)
    path = tmp_path / "state.safetensors"
    save_checkpoint(path, _tensors(), {}, ART)
    with pytest.raises(CheckpointError, match="different|not the loaded artifact"):
        load_checkpoint(path, "b" * 64)
