"""The demo entry point runs on a small slice of the bundled assets, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_without_torch_on_a_slice(tmp_path):
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise ImportError('torch import attempted: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from edgetta.cli import main\n"
        f"rc = main(['demo', '--out', {str(tmp_path)!r}, '--limit-per-phase', '64', '--batch-size', '32'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
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
