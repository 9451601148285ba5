"""The public API: a small set of names importable from the package root, lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import edgetta

ART = Path(edgetta.__file__).parent / "assets" / "fmnist_resnet_bn"


def test_every_public_name_resolves():
    assert set(edgetta.__all__) == {*edgetta._EXPORTS, "__version__"}
    for name in edgetta.__all__:
        assert getattr(edgetta, name) is not None, name
    assert set(dir(edgetta)) >= {"Adapter", "load_config", "Engine", "Source", "run_stream"}


def test_import_edgetta_is_cheap():
    heavy = "('onnxruntime', 'onnx', 'numpy', 'torch')"
    code = f"import sys, edgetta; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_readme_embedding_example_runs():
    """The ten-line example in README, as a user would paste it."""
    from edgetta import Adapter, ArraySource, run_stream
    from edgetta import load_config as load

    adapter = Adapter(ART, load(preset="tent"))
    frames = np.random.default_rng(0).integers(0, 255, size=(8, 1, 28, 28), dtype=np.uint8)
    result = adapter.process(frames)
    assert result.preds.shape == (8,) and all(r is None for r in result.skipped)
    summary = run_stream(adapter, ArraySource(frames.astype(np.float32) / 255.0), [])
    assert summary.samples == 8


def test_engine_protocol_is_satisfied_by_the_ort_engine():
    adapter = edgetta.Adapter(ART, edgetta.load_config(method="frozen"))
    assert isinstance(adapter.engine, edgetta.Engine)
    assert "CPUExecutionProvider" in adapter.engine.providers
