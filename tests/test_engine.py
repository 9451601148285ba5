"""OrtEngine: the rewritten graphs (edgetta.engines.ort.rewrite) give the exported graphs' results -- infer and adapt,
batch 1 and 16, every bn_alpha path -- with the parameters of each call (no stale buffers), reuse verified
rewrites from the cache and fall back to the exported graph when a rewrite is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgetta.contract import (
    BN_ALPHA,
    CE_WEIGHT,
    ENTROPY_WEIGHT,
    LOGITS,
    LOSS,
    SOFT_TARGET,
    SOFT_WEIGHT,
    load_artifact,
)
from edgetta.engines import Engine, EngineOptions, OrtEngine
from edgetta.engines.ort import graph_cache

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
    feed[BN_ALPHA] = np.asarray(alpha, np.float32)
    if weights is not None:
        feed[ENTROPY_WEIGHT], feed[CE_WEIGHT] = weights
        inputs = {i.name for i in session.get_inputs()}
        if SOFT_TARGET in inputs:  # contract v2: a zero soft cross-entropy term
            feed[SOFT_TARGET] = np.zeros((len(x), artifact.num_classes), np.float32)
            feed[SOFT_WEIGHT] = np.zeros(len(x), np.float32)
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
    assert BN_ALPHA not in adapt.inputs  # fixed at 1: ORT folds the blend away
    infer = engine.variant("infer", 0.4)
    assert set(infer.report["forward"]) == bn_layers and BN_ALPHA in infer.inputs


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
    some = engine.adapt(x, params, 1.0, *weights, outputs=[LOGITS, LOSS, grad])
    assert set(some) == {LOGITS, LOSS, grad}
    assert_same(some, {k: full[k] for k in some}, artifact)
    logits = engine.infer(x, params, 0.0, outputs=[LOGITS])
    assert_same(logits, {LOGITS: engine.infer(x, params, 0.0)[LOGITS]}, artifact)
    with pytest.raises(ValueError, match="no output"):
        engine.infer(x, params, 0.0, outputs=["nope"])


def test_rewritten_graphs_are_cached_and_reused(artifact, tmp_path, monkeypatch):
    first = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    report = first.variant("adapt", 1.0).report
    assert list((tmp_path / "graphs").glob("adapt-*.onnx"))

    def fail(*args, **kwargs):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr("edgetta.engines.ort.rewrite.optimize_graph", fail)
    second = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    assert second.variant("adapt", 1.0).report == report
    x, weights = batch(artifact, 4, seed=5), loss_weights(4, seed=5)
    assert_same(
        second.adapt(x, artifact.params, 1.0, *weights), first.adapt(x, artifact.params, 1.0, *weights), artifact
    )


def test_a_wrong_rewrite_falls_back_to_the_exported_graph(artifact, tmp_path, monkeypatch, caplog):
    import edgetta.engines.ort.rewrite as rewrite

    real = rewrite.optimize_graph

    def broken(*args, **kwargs):
        model, report = real(*args, **kwargs)
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.op_type = "Abs"
        return model, report

    monkeypatch.setattr(rewrite, "optimize_graph", broken)
    engine = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    with caplog.at_level("INFO", logger="edgetta.engine"):
        variant = engine.variant("adapt", 1.0)
    assert variant.report is None
    # One plain log line (no warning with a source line) and the reason kept on the engine for the runtime.
    assert len(engine.fallbacks) == 1 and "running the exported graph" in engine.fallbacks[0]
    records = [r for r in caplog.records if r.name == "edgetta.engine"]
    assert len(records) == 1 and "\n" not in records[0].getMessage() and "differs" in records[0].getMessage()
    assert not list((tmp_path / "graphs").glob("adapt-*.onnx"))  # never cache an unverified graph
    x, weights = batch(artifact, 4, seed=6), loss_weights(4, seed=6)
    expected = run_exported(exported_session(artifact, "adapt"), artifact, x, artifact.params, 1.0, weights)
    assert_same(engine.adapt(x, artifact.params, 1.0, *weights), expected, artifact)


def test_a_fallback_is_no_python_warning(artifact, tmp_path, monkeypatch):
    import warnings

    import edgetta.engines.ort.rewrite as rewrite

    def failing(*args, **kwargs):
        raise ValueError("pattern not supported")

    monkeypatch.setattr(rewrite, "optimize_graph", failing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
        engine.variant("infer", 1.0)
    assert engine.fallbacks == [
        "rewritten infer graph not used (ValueError: pattern not supported); running the exported graph"
    ]


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
        "from edgetta.contract import load_artifact\n"
        "from edgetta.engines import EngineOptions, OrtEngine\n"
        f"art = load_artifact({str(artifact.path)!r})\n"
        f"engine = OrtEngine(art, EngineOptions(cache_dir={str(tmp_path)!r}))\n"
        "x = np.zeros((2, *art.input_shape[1:]), np.float32)\n"
        "out = engine.adapt(x, art.params, 1.0, np.full(2, 0.5, np.float32), np.zeros(2, np.float32))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'onnx': 'onnx' in sys.modules, 'n': len(out)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "onnx": False, "n": len(exported_session(artifact, "adapt").get_outputs())}


# -- the Engine protocol ---------------------------------------------------------------------------


def test_ort_engine_satisfies_the_engine_protocol(artifact, engine):
    assert isinstance(engine, Engine)
    assert engine.providers == ["CPUExecutionProvider"]
    assert engine.output_names("infer")[0] == LOGITS
    adapt = engine.output_names("adapt")
    assert set(artifact.grad_names.values()) <= set(adapt) and LOSS in adapt
    assert not isinstance(object(), Engine)


# -- the rewritten-graph cache ---------------------------------------------------------------------


def cache_entries(folder, which="adapt"):
    return sorted((folder / "graphs").glob(f"{which}-*.onnx"))


def test_a_tampered_cache_entry_is_rebuilt_and_reverified(artifact, tmp_path, monkeypatch):
    first = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    report = first.variant("adapt", 1.0).report
    (entry,) = cache_entries(tmp_path)
    good = entry.read_bytes()
    # A valid graph ORT loads happily, but not the verified one: one ReLU turned into Abs.
    import onnx

    model = onnx.load_from_string(good)
    next(n for n in model.graph.node if n.op_type == "Relu").op_type = "Abs"
    entry.write_bytes(model.SerializeToString())

    import edgetta.engines.ort.rewrite as rewrite
    import edgetta.engines.ort.verify as verify

    calls = {"rewrite": 0, "verify": 0}
    real_rewrite, real_verify = rewrite.optimize_graph, verify.compare_with_export

    def counting_rewrite(*args, **kwargs):
        calls["rewrite"] += 1
        return real_rewrite(*args, **kwargs)

    def counting_verify(*args, **kwargs):
        calls["verify"] += 1
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(rewrite, "optimize_graph", counting_rewrite)
    monkeypatch.setattr(verify, "compare_with_export", counting_verify)
    second = OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path)))
    assert second.variant("adapt", 1.0).report == report
    assert calls == {"rewrite": 1, "verify": 1}
    assert entry.read_bytes() == good  # the rebuilt, verified graph replaced the tampered one
    x, weights = batch(artifact, 4, seed=8), loss_weights(4, seed=8)
    expected = run_exported(exported_session(artifact, "adapt"), artifact, x, artifact.params, 1.0, weights)
    assert_same(second.adapt(x, artifact.params, 1.0, *weights), expected, artifact)


def test_a_truncated_cache_entry_is_not_used(artifact, tmp_path):
    OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path))).variant("infer", 1.0)
    (entry,) = cache_entries(tmp_path, "infer")
    key = entry.stem
    cache = graph_cache.GraphCache(tmp_path / "graphs")
    assert cache.load(key) is not None
    entry.write_bytes(entry.read_bytes()[:-1])
    assert cache.load(key) is None
    (tmp_path / "graphs" / f"{key}.json").write_text("{}")  # a meta file without the hash
    assert cache.load(key) is None


def test_cache_key_covers_library_versions_and_every_rewrite_source(artifact, tmp_path, monkeypatch):
    def key() -> str:
        return graph_cache.GraphCache(tmp_path).variant_key(artifact, "adapt", 1.0, None)

    base = key()
    assert key() == base
    versions = graph_cache.library_versions()
    assert set(versions) >= {"onnx", "onnxruntime"}
    monkeypatch.setattr(graph_cache, "library_versions", lambda: {**versions, "onnxruntime": "0.0.0-other"})
    assert key() != base
    monkeypatch.setattr(graph_cache, "library_versions", lambda: {**versions, "onnx": "0.0.0-other"})
    assert key() != base
    monkeypatch.setattr(graph_cache, "library_versions", lambda: versions)
    assert key() == base

    sources = graph_cache.rewrite_sources()
    names = {p.name for p in sources}
    assert {"graph.py", "batchnorm.py", "activations.py", "pooling.py", "optimize.py", "verify.py"} <= names
    copies = []
    for k, path in enumerate(sources):
        copy = tmp_path / "src" / f"{k}" / path.name
        copy.parent.mkdir(parents=True)
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(graph_cache, "rewrite_sources", lambda: copies)
    assert key() == base
    for copy in copies:  # a change in ANY of the files changes the key
        original = copy.read_bytes()
        copy.write_bytes(original + b"\n# changed\n")
        assert key() != base, copy.name
        copy.write_bytes(original)
    assert key() == base


def test_cache_key_covers_graph_alpha_and_outputs(artifact, tmp_path):
    cache = graph_cache.GraphCache(tmp_path)
    keys = {
        cache.variant_key(artifact, "adapt", 1.0, None),
        cache.variant_key(artifact, "adapt", 0.0, None),
        cache.variant_key(artifact, "adapt", None, None),
        cache.variant_key(artifact, "adapt", 1.0, (LOGITS,)),
        cache.variant_key(artifact, "infer", 1.0, None),
    }
    assert len(keys) == 5


def test_cache_location_follows_options_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTA_CACHE_DIR", str(tmp_path / "env"))
    assert graph_cache.default_folder(EngineOptions()) == tmp_path / "env" / "graphs"
    assert graph_cache.default_folder(EngineOptions(cache_dir=str(tmp_path / "opt"))) == tmp_path / "opt" / "graphs"
    assert graph_cache.default_folder(EngineOptions(extra={"graph_cache": str(tmp_path / "x")})) == tmp_path / "x"
    assert graph_cache.default_folder(EngineOptions(extra={"graph_cache": False})) is None
    monkeypatch.delenv("EDGETTA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert graph_cache.default_folder(EngineOptions()) == tmp_path / "xdg" / "edgetta" / "graphs"


def test_the_test_session_never_uses_the_home_cache():
    import os
    from pathlib import Path

    folder = graph_cache.default_folder(EngineOptions())
    assert folder is not None and Path.home() / ".cache" not in folder.parents
    assert os.environ["EDGETTA_CACHE"] and Path.home() / ".cache" not in Path(os.environ["EDGETTA_CACHE"]).parents
