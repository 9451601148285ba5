"""The demo entry point runs on a small slice of the bundled assets, torch-free."""

from __future__ import annotations

import json

from tests.conftest import run_without_torch


def test_demo_runs_without_torch_on_a_slice(tmp_path):
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
