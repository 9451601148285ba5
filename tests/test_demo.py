"""The demo entry point runs on a small slice of the bundled assets, torch-free, through the one loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetta.demo import DemoStream, asset_path, recipe_config, run_demo
from edgetta.runtime.adapter import Adapter
from tests.blocking import run_blocking
from tests.conftest import run_without_torch


def test_demo_runs_without_torch_on_a_slice(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_without_torch(
        "from edgetta.cli import main\n"
        f"rc = main(['demo', '--out', {str(tmp_path)!r}, '--limit-per-phase', '64', '--batch-size', '32'])\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clean again" in result.stdout and "frozen" in result.stdout
    results = json.loads((tmp_path / "demo.json").read_text())
    assert set(results["recipes"]) == {"frozen", "demo"}
    assert results["phases"][0] == "clean" and len(results["phases"]) == 6
    demo, frozen = results["recipes"]["demo"], results["recipes"]["frozen"]
    assert demo["totals"]["updates"] > 0
    # On the corrupted phases the adapted recipe must beat the frozen model.
    shifted = [p for p in results["phases"] if "clean" not in p]
    assert sum(demo["per_phase"][p] for p in shifted) > sum(frozen["per_phase"][p] for p in shifted)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_demo_without_matplotlib_prints_the_table_and_writes_json(tmp_path):
    result = run_blocking(
        "from edgetta.cli import main\n"
        f"rc = main(['demo', '--out', {str(tmp_path)!r}, '--limit-per-phase', '16', '--recipes', 'frozen'])\n",
        blocked=("matplotlib",),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clean again" in result.stdout and "fog" in result.stdout
    assert "demo.png skipped: pip install 'edgetta[plot]'" in result.stderr
    assert json.loads((tmp_path / "demo.json").read_text())["recipes"]["frozen"]["accuracy"] > 0.3
    assert not (tmp_path / "demo.png").exists()


def test_demo_numbers_equal_phase_by_phase_batching(tmp_path):
    """Batches never straddle a phase and the adapter sees the same calls as a hand-written loop, so the
    per-phase accuracies in demo.json are those of that loop."""
    limit, batch = 40, 16
    results = run_demo(tmp_path, recipes=("demo",), batch_size=batch, limit_per_phase=limit)
    stream = DemoStream.load(limit_per_phase=limit)
    adapter = Adapter(asset_path("fmnist_resnet_bn"), recipe_config("demo", batch))
    correct = []
    for p in range(len(stream.phase_names)):
        rows = np.flatnonzero(stream.phase == p)
        for start in range(0, len(rows), batch):
            take = rows[start : start + batch]
            correct.append(adapter.process(stream.x[take]).preds == stream.y[take])
    correct = np.concatenate(correct)
    per_phase = results["recipes"]["demo"]["per_phase"]
    for p, name in enumerate(stream.phase_names):
        assert per_phase[name] == pytest.approx(correct[stream.phase == p].mean())
    assert results["recipes"]["demo"]["totals"]["updates"] == adapter.totals["updates"] > 0


def test_recipe_names_pick_presets_and_the_demo_recipe():
    assert recipe_config("safe_tent", 32).name == "safe_tent" and recipe_config("safe_tent", 32).rails
    demo = recipe_config("demo", 32)
    assert demo.name == "demo" and demo.method == "eata" and demo.method_args["optimizer"] == "adam"
