"""Smoke test of tools/bench.py: 2 corruptions x 16 samples x 2 methods on the bundled BN artifact."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"


def _load_bench():
    spec = importlib.util.spec_from_file_location("edgetta_bench_tool", REPO / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fmnist():
    from edgetta.data import load_fashion_mnist

    try:
        return load_fashion_mnist("test")
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")


def test_bench_smoke(fmnist, tmp_path):
    if not (ARTIFACT / "manifest.json").is_file():
        pytest.skip("bundled BN artifact missing")
    bench = _load_bench()
    images, labels = fmnist
    names = ["gaussian_noise", "fog"]
    results = bench.run_benchmark(
        {"resnet_bn": ARTIFACT},
        images,
        labels,
        per_domain=16,
        severities=[5],
        methods=["frozen", "tent"],
        corruptions=names,
        wild=["mixed", "label_sorted", "bs1", "forgetting"],
        wild_variant=False,
        bs1_samples=4,
        label_sorted_samples=32,
        clean_samples=16,
        log=lambda msg: None,
    )
    assert results["meta"]["per_domain"] == 16
    res = results["models"]["resnet_bn"]
    for table in (res["episodic"]["5"], res["continual"]):
        assert set(table) == {"frozen", "tent"}
        for entry in table.values():
            assert set(entry["per_corruption"]) == set(names)
            assert all(0.0 <= v <= 100.0 for v in entry["per_corruption"].values())
            assert entry["mean"] == pytest.approx(sum(entry["per_corruption"].values()) / len(names))
    assert res["episodic"]["5"]["frozen"]["backward_passes"] == 0
    assert res["episodic"]["5"]["tent"]["backward_passes"] == len(names)  # one batch of 16 per corruption
    for setting in ("mixed", "label_sorted", "bs1", "forgetting"):
        assert set(res["wild"][setting]) == {"frozen", "tent"}
        assert 0.0 <= res["wild"][setting]["tent"]["error"] <= 100.0
    assert res["wild"]["bs1"]["frozen"]["backward_passes"] == 0

    json.loads(json.dumps(results))  # JSON-able
    md = bench.render_markdown(results, "python tools/bench.py --smoke")
    assert md.startswith("# Benchmarks")
    assert "Fashion-MNIST-C" in md and "16 test images" in md
    assert "### Episodic, severity 5" in md and "### Wild settings" in md
    assert "| tent | **" in md
