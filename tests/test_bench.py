"""tools/bench.py: its settings build valid configs, it runs streams through the one loop, and a smoke run
(2 corruptions x 16 samples x 2 methods on the bundled BN artifact, when Fashion-MNIST is installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"


def _load_bench():
    spec = importlib.util.spec_from_file_location("edgetta_bench_tool", REPO / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


def test_every_bench_setting_builds_a_config(bench):
    for name, spec in bench.METHOD_SETTINGS.items():
        config = bench.make_config(name, 16)
        assert config.name == name and config.method == spec.get("method", name) and config.batch_size == 16
        for key, value in spec["method_args"].items():
            assert config.method_args[key] == value


def test_predict_stream_uses_the_one_loop_and_matches_plain_batching(bench):
    from edgetta.runtime.adapter import Adapter

    with np.load(ARTIFACT.parent / "demo_stream.npz") as data:
        images = data["images"][data["phase"] == 1][:40]
    x = ((images.astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    x[7] = np.nan
    manual = Adapter(ARTIFACT, bench.make_config("tent", 16))
    expected = np.concatenate([manual.process(x[i : i + 16]).preds for i in range(0, len(x), 16)])
    adapter = Adapter(ARTIFACT, bench.make_config("tent", 16))
    preds = bench.predict_stream(adapter, x, 16)
    np.testing.assert_array_equal(preds, expected)
    assert preds[7] == -1 and adapter.totals["updates"] == manual.totals["updates"] > 0


@pytest.fixture(scope="module")
def fmnist():
    from edgetta.data import load_fashion_mnist

    try:
        return load_fashion_mnist("test")
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")


def test_bench_smoke(fmnist, bench, tmp_path):
    if not (ARTIFACT / "manifest.json").is_file():
        pytest.skip("bundled BN artifact missing")
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
