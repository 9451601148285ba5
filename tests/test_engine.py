"""OrtEngine: the rewritten graphs (edgetta.kernels.graph) give the exported graphs' results -- infer and adapt,
batch 1 and 16, every bn_alpha path -- with the parameters of each call (no stale buffers), reuse verified
rewrites from the cache and fall back to the exported graph when a rewrite is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgetta.runtime.artifact import load_artifact
from edgetta.runtime.engine import EngineOptions, OrtEngine

TOLERANCE = 1e-4  # norm-relative; a gradient's norm is floored at 1% of all gradients' norm (export parity rule)


@pytest.fixture(scope="module")
def artifact(artifacts):
    path, _ = artifacts.get("resnet_bn")
    return load_artifact(path)


@pytest.fixture
def engine(artifact, tmp_path):
    return OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))


def exported_session(artifact, which: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(artifact.graph_path(which)), providers=["CPUExecutionProvider"])


def run_exported(session, artifact, x, params, alpha, weights=None) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: params[i.name] for i in session.get_inputs() if i.name in params}
    feed[artifact.input_name] = x
    feed["bn_alpha"] = np.asarray(alpha, np.float32)
    if weights is not None:
        feed["entropy_weight"], feed["ce_weight"] = weights
    return dict(zip(names, session.run(names, feed)))


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], artifact) -> None:
    grads = set(artifact.grad_names.values())
    total = float(np.sqrt(sum(float(np.sum(v**2)) for k, v in expected.items() if k in grads)))
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        scale = max(float(np.linalg.norm(want)), 0.01 * total if name in grads else 0.0, 1e-6)
        error = float(np.linalg.norm(got[name] - want)) / scale
        assert error <= TOLERANCE, f"{name}: {error:.2e}"


def perturbed(params: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Parameters away from the source values (affine jittered, running variance rescaled)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in params.items():
        if name.endswith("running_var"):
            out[name] = (value * rng.uniform(0.5, 2.0, value.shape)).astype(np.float32)
        else:
            out[name] = (value + 0.2 * rng.standard_normal(value.shape)).astype(np.float32)
    return out


def batch(artifact, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *artifact.input_shape[1:])).astype(np.float32)


def loss_weights(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 2.0 / n, n).astype(np.float32), rng.uniform(0.0, 1.0 / n, n).astype(np.float32)


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.4])
@pytest.mark.parametrize("n", [1, 16])
def test_infer_matches_exported_graph(artifact, engine, n, alpha):
    params = perturbed(artifact.params, seed=n)
    x = batch(artifact, n, seed=n)
    expected = run_exported(exported_session(artifact, "infer"), artifact, x, params, alpha)
    assert_same(engine.infer(x, params, alpha), expected, artifact)


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.4])
@pytest.mark.parametrize("n", [1, 16])
def test_adapt_matches_exported_graph(artifact, engine, n, alpha):
    params = perturbed(artifact.params, seed=n + 1)
    x = batch(artifact, n, seed=n + 1)
    weights = loss_weights(n, seed=n)
    expected = run_exported(exported_session(artifact, "adapt"), artifact, x, params, alpha, weights)
    assert_same(engine.adapt(x, params, alpha, *weights), expected, artifact)


def test_every_batchnorm_layer_is_rewritten(artifact, engine):
    bn_layers = {la.module for la in artifact.norm_layers if la.kind == "batchnorm"}
    adapt = engine.variant("adapt", 1.0)
    assert adapt.report is not None and not adapt.report["skipped"]
    assert set(adapt.report["forward"]) == set(adapt.report["backward"]) == bn_layers
    assert adapt.report["relu_grads"] > 0 and adapt.report["nodes_after"] < adapt.report["nodes_before"]
    assert "bn_alpha" not in adapt.inputs  # fixed at 1: ORT folds the blend away
    infer = engine.variant("infer", 0.4)
    assert set(infer.report["forward"]) == bn_layers and "bn_alpha" in infer.inputs


def test_repeated_calls_use_each_calls_parameters(artifact, engine):
    """New arrays, arrays changed in place, other inputs, other alphas: every call sees its own values, and
    what earlier calls returned is never overwritten by later ones."""
    infer_ref, adapt_ref = exported_session(artifact, "infer"), exported_session(artifact, "adapt")
    params = perturbed(artifact.params, seed=10)
    kept = []
    for step in range(4):
        n = 16 if step % 2 == 0 else 1
        x = batch(artifact, n, seed=20 + step)
        weights = loss_weights(n, seed=step)
        if step == 1:
            params = perturbed(artifact.params, seed=11)  # new arrays
        elif step >= 2:
            for name in artifact.trainable_names:  # the same arrays, changed in place
                params[name] *= np.float32(1.0 + 0.1 * step)
            params[artifact.norm_layers[0].running_mean] += np.float32(0.5)
        for alpha in (1.0, 0.0, 0.7):
            got = engine.adapt(x, params, alpha, *weights)
            assert_same(got, run_exported(adapt_ref, artifact, x, params, alpha, weights), artifact)
            assert_same(engine.infer(x, params, alpha), run_exported(infer_ref, artifact, x, params, alpha), artifact)
            kept.append((got, {k: v.copy() for k, v in got.items()}))
    for got, copy in kept:
        for name, value in copy.items():
            np.testing.assert_array_equal(got[name], value)


def test_output_subsets(artifact, engine):
    params = perturbed(artifact.params, seed=3)
    x = batch(artifact, 8, seed=3)
    weights = loss_weights(8, seed=3)
    full = engine.adapt(x, params, 1.0, *weights)
    grad = next(iter(artifact.grad_names.values()))
    some = engine.adapt(x, params, 1.0, *weights, outputs=["logits", "loss", grad])
    assert set(some) == {"logits", "loss", grad}
    assert_same(some, {k: full[k] for k in some}, artifact)
    logits = engine.infer(x, params, 0.0, outputs=["logits"])
    assert_same(logits, {"logits": engine.infer(x, params, 0.0)["logits"]}, artifact)
    with pytest.raises(ValueError, match="no output"):
        engine.infer(x, params, 0.0, outputs=["nope"])


def test_rewritten_graphs_are_cached_and_reused(artifact, tmp_path, monkeypatch):
    first = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    report = first.variant("adapt", 1.0).report
    assert list((tmp_path / "graphs").glob("adapt-*.onnx"))

    def fail(*args, **kwargs):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr("edgetta.kernels.graph.optimize_graph", fail)
    second = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    assert second.variant("adapt", 1.0).report == report
    x, weights = batch(artifact, 4, seed=5), loss_weights(4, seed=5)
    assert_same(
        second.adapt(x, artifact.params, 1.0, *weights), first.adapt(x, artifact.params, 1.0, *weights), artifact
    )


def test_a_wrong_rewrite_falls_back_to_the_exported_graph(artifact, tmp_path, monkeypatch):
    import edgetta.kernels.graph as graph

    real = graph.optimize_graph

    def broken(*args, **kwargs):
        model, report = real(*args, **kwargs)
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.op_type = "Abs"
        return model, report

    monkeypatch.setattr(graph, "optimize_graph", broken)
    engine = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    with pytest.warns(RuntimeWarning, match="running the exported graph"):
        variant = engine.variant("adapt", 1.0)
    assert variant.report is None
    assert not list((tmp_path / "graphs").glob("adapt-*.onnx"))  # never cache an unverified graph
    x, weights = batch(artifact, 4, seed=6), loss_weights(4, seed=6)
    expected = run_exported(exported_session(artifact, "adapt"), artifact, x, artifact.params, 1.0, weights)
    assert_same(engine.adapt(x, artifact.params, 1.0, *weights), expected, artifact)


def test_optimize_false_runs_the_exported_graphs(artifact):
    engine = OrtEngine(artifact, EngineOptions(optimize=False, extra={"graph_cache": False}))
    variant = engine.variant("adapt", 1.0)
    assert variant.report is None and "bn_alpha" in variant.inputs


def test_sleep_cnn_max_pool_gradients_with_ties(artifacts, tmp_path):
    """The 1-D max-pool backward rewrite routes each window's gradient to its first maximum, like the export,
    also on flat input stretches where windows hold exact ties."""
    path, _ = artifacts.get("sleep_cnn")
    artifact = load_artifact(path)
    engine = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    assert engine.variant("adapt", 1.0).report["pool_scatters"] > 0
    x = batch(artifact, 6, seed=7)
    x[:, :, 1000:2200] = 0.25
    weights = loss_weights(6, seed=7)
    for alpha in (1.0, 0.4):
        expected = run_exported(exported_session(artifact, "adapt"), artifact, x, artifact.params, alpha, weights)
        assert_same(engine.adapt(x, artifact.params, alpha, *weights), expected, artifact)


def test_cached_engine_imports_neither_torch_nor_onnx(artifact, tmp_path):
    OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path))).variant("adapt", 1.0)  # fill the cache
    code = (
        "import json, sys, numpy as np\n"
        "from edgetta.runtime.artifact import load_artifact\n"
        "from edgetta.runtime.engine import EngineOptions, OrtEngine\n"
        f"art = load_artifact({str(artifact.path)!r})\n"
        f"engine = OrtEngine(art, EngineOptions(cache_dir={str(tmp_path)!r}))\n"
        "x = np.zeros((2, *art.input_shape[1:]), np.float32)\n"
        "out = engine.adapt(x, art.params, 1.0, np.full(2, 0.5, np.float32), np.zeros(2, np.float32))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'onnx': 'onnx' in sys.modules, 'n': len(out)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "onnx": False, "n": len(exported_session(artifact, "adapt").get_outputs())}
