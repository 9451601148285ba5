"""The whole cloud-edge loop from two processes started by the documented commands (docs/sync.md):
``edgetta keys generate``, ``edgetta cloud serve`` (a real uvicorn on 127.0.0.1) and ``edgetta run`` with a
``sync:`` block reading a watched folder of Fashion-MNIST-C frames. The edge uploads what CEMA's selection keeps,
the cloud distils and publishes, the edge verifies and applies; killed right after an apply it comes back on the
committed slot; on new frames of the same shift it then beats the frozen edge model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("torch")  # the cloud learner; the device side never imports it
pytest.importorskip("cv2")  # the edge reads PNG frames from a watched folder


def _bench():
    spec = importlib.util.spec_from_file_location("edgetta_bench_sync", REPO / "tools" / "bench_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loop_runs_end_to_end_and_the_edge_beats_its_frozen_model(tmp_path: Path) -> None:
    bench = _bench()
    data = bench.loop_images("gaussian_noise", 5, n_learn=384, n_eval=256, seed=0)
    frozen = bench.frozen_accuracy(data["eval_x"], data["eval_y"])
    # the device runs its model frozen: whatever it gains comes from the cloud's bundles
    loop = bench.SyncLoop(tmp_path, policy="cema", edge_preset="frozen", poll_interval=0.2, warmup=128)
    loop.setup()
    try:
        loop.start_cloud()
        loop.start_edge()
        learn = loop.feed(data["learn_x"], data["learn_y"], "learn")
        loop.wait_records(len(learn))
        m = loop.wait_uploaded()
        seen = m['edgetta_sync_samples_total{outcome="seen"}']
        uploaded = m.get('edgetta_sync_samples_total{outcome="uploaded"}', 0.0)
        assert seen == len(learn) and 0.1 * seen < uploaded < 0.9 * seen  # CEMA kept some, excluded some
        assert m['edgetta_sync_excluded_total{reason="unreliable"}'] > 0
        health = loop.health()
        assert health["samples"] == uploaded and health["steps"] >= 1  # the learner took every upload

        first = loop.publish()  # the edge polls, verifies and applies it
        assert first["version"] >= 1 and m["edgetta_sync_bundle_version"] == -1
        # the edge is killed right as it applies the next bundle (after the slot commit, around its checkpoint)
        second_version = first["version"] + 1
        loop.publish_only()
        loop.wait_log(f"bundle version {second_version} applied from slot", timeout=120)
        loop.kill_edge()
        loop.start_edge()  # the documented command again: it resumes
        loop.wait_log(f"active, bundle version {second_version}", timeout=60)  # back on the committed slot
        slots = json.loads((tmp_path / "edge/sync/slots/state.json").read_text())
        assert slots["applied_version"] == second_version

        evaluate = loop.feed(data["eval_x"], data["eval_y"], "eval")
        rows = loop.wait_records(len(learn) + len(evaluate))
        accuracy = loop.accuracy(rows, evaluate)
        assert loop.metrics()["edgetta_sync_bundle_version"] == second_version
    finally:
        loop.stop()
    assert accuracy > frozen + 0.05, (accuracy, frozen)
