"""Export at scale: weights stored once (shared external data, a graph cache without weights), sizes in
``edgetta inspect``, old artifacts with embedded weights still load, and the export's stage messages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from edgetta.contract import load_artifact, sha256_file
from edgetta.engines.options import EngineOptions
from edgetta.engines.ort.engine import OrtEngine
from edgetta.errors import ArtifactError
from edgetta.export.weights import EXTERNAL_MIN_BYTES, is_weight
from tests.conftest import make_family_model

torch = pytest.importorskip("torch")
nn = torch.nn


def _initializers(path):
    return list(onnx.load(str(path), load_external_data=False).graph.initializer)


def _external(tensor) -> tuple[str, int, int] | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {kv.key: kv.value for kv in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def test_every_weight_is_stored_once(artifacts):
    path, manifest = artifacts.get("resnet_bn")
    model, _ = make_family_model("resnet_bn")
    blob = (path / "weights.bin").read_bytes()
    frozen = [p.detach().numpy().astype(np.float32).tobytes() for n, p in model.named_parameters() if "bn" not in n]
    frozen = [b for b in frozen if len(b) >= EXTERNAL_MIN_BYTES]
    assert frozen, "the test model has no large weight"
    for data in frozen:  # each weight is in the file exactly once ...
        first = blob.find(data)
        assert first >= 0 and blob.find(data, first + 1) == -1
    # ... and nothing else of size is (no flipped backward kernels, no second copy for the infer graph).
    assert len(blob) <= sum(len(b) for b in frozen) + 64 * len(frozen)
    refs = {}
    for which in ("infer", "adapt"):
        for tensor in _initializers(path / f"{which}.onnx"):
            ref = _external(tensor)
            if ref is None:
                assert not is_weight(tensor), tensor.name
            else:
                assert ref[0] == "weights.bin"
                refs.setdefault(which, set()).add(ref)
    assert refs["infer"] <= refs["adapt"]
    assert manifest["weights"] == {"file": "weights.bin", "sha256": sha256_file(path / "weights.bin")}


def test_tampered_weights_fail_the_integrity_check(artifacts, tmp_path, capsys):
    from edgetta.cli import main

    source, _ = artifacts.get("resnet_bn")
    path = tmp_path / "art"
    shutil.copytree(source, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "weights.bin" in out and "float32 weights and norm parameters:" in out
    with open(path / "weights.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x01\x02\x03\x04")
    assert main(["inspect", str(path)]) == 1
    assert "weights: weights.bin does not match its sha256" in capsys.readouterr().out
    with pytest.raises(ArtifactError, match="weights.bin does not match"):
        load_artifact(path)


def test_graph_cache_holds_no_weights_and_engine_matches_export(artifacts, tmp_path):
    path, _ = artifacts.get("resnet_bn")
    artifact = load_artifact(path)
    cache = tmp_path / "graphs"
    engine = OrtEngine(artifact, EngineOptions(extra={"graph_cache": str(cache)}))
    plain = OrtEngine(artifact, EngineOptions(optimize=False))
    x = np.random.default_rng(0).standard_normal((3, *artifact.input_shape[1:])).astype(np.float32)
    w = np.full(3, 1 / 3, np.float32)
    for alpha in (0.0, 1.0):
        got, want = engine.adapt(x, artifact.params, alpha, w, w), plain.adapt(x, artifact.params, alpha, w, w)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-5)
    engine.infer(x, artifact.params, 1.0)
    assert engine.fallbacks == []
    graphs = sorted(cache.glob("*.onnx"))
    assert graphs
    for graph in graphs:
        for tensor in _initializers(graph):
            if _external(tensor) is None:
                assert not is_weight(tensor), (graph, tensor.name)
    # A second engine reuses the cached graphs (which still read the artifact's weights file).
    again = OrtEngine(artifact, EngineOptions(extra={"graph_cache": str(cache)}))
    np.testing.assert_allclose(
        again.infer(x, artifact.params, 1.0)["logits"],
        plain.infer(x, artifact.params, 1.0)["logits"],
        rtol=1e-4,
        atol=1e-5,
    )
    assert sorted(cache.glob("*.onnx")) == graphs


def test_artifact_with_embedded_weights_still_loads(artifacts, tmp_path):
    """Artifacts written before weights.bin existed hold the weights inside each graph and no manifest entry."""
    source, _ = artifacts.get("resnet_bn")
    path = tmp_path / "old"
    path.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    for which in ("infer", "adapt"):
        model = onnx.load(str(source / f"{which}.onnx"))  # loads the external data into the graph
        for tensor in model.graph.initializer:
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
        onnx.save(model, str(path / f"{which}.onnx"))
        manifest["graphs"][which]["sha256"] = sha256_file(path / f"{which}.onnx")
    shutil.copy(source / "params.safetensors", path)
    del manifest["weights"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    old, new = load_artifact(path), load_artifact(source)
    assert old.manifest.weights is None
    from edgetta.runtime.inspect import size_report

    assert "weights.bin" not in size_report(path) and "re-export to store them once" in size_report(path)
    assert "re-export" not in size_report(source)
    x = np.random.default_rng(1).standard_normal((2, *new.input_shape[1:])).astype(np.float32)
    got = OrtEngine(old, EngineOptions(extra={"graph_cache": False}))
    want = OrtEngine(new, EngineOptions(extra={"graph_cache": False}))
    np.testing.assert_allclose(
        got.infer(x, old.params, 1.0)["logits"], want.infer(x, new.params, 1.0)["logits"], rtol=1e-5, atol=1e-6
    )


def test_progress_printer_and_terminal_default(monkeypatch, capsys):
    import sys

    from edgetta.export import progress

    assert progress.resolve(False) is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.resolve(None) is None  # off a terminal: silent unless asked
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    report = progress.resolve(None)
    assert report is not None
    report("trace", 12.34)
    err = capsys.readouterr().err
    assert err.startswith("edgetta export: trace") and err.rstrip().endswith("12.3 s")


@pytest.mark.parametrize(("flag", "expected"), [([], None), (["--progress"], True), (["--quiet"], False)])
def test_cli_progress_flags(tmp_path, monkeypatch, flag, expected):
    import edgetta.export
    from edgetta.cli import main

    seen = {}

    class Stop(Exception):
        pass

    def fake_export(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    (tmp_path / "net.py").write_text("import torch.nn as nn\ndef build():\n    return nn.BatchNorm1d(3)\n")
    monkeypatch.setattr(edgetta.export, "export_model", fake_export)
    with pytest.raises(Stop):
        main(["export", f"{tmp_path / 'net.py'}:build", "--input-shape", "2,3", "--out", str(tmp_path / "o"), *flag])
    assert seen["progress"] is expected


class UnevenPool1d(nn.Module):
    """EEG-like 1-D net whose pools do not divide the length: 30 samples to 7 (average) and 4 (max); a
    PReLU and a fixed average pool (SleePyCo's layers) on the gradient path as well."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 5, padding=2)
        self.bn = nn.BatchNorm1d(4)
        self.prelu, self.smooth = nn.PReLU(4, init=0.2), nn.AvgPool1d(3, stride=1, padding=1)
        self.avg, self.max = nn.AdaptiveAvgPool1d(7), nn.AdaptiveMaxPool1d(4)
        self.fc = nn.Linear(4 * 11, 3)

    def forward(self, x):
        h = self.smooth(self.prelu(self.bn(self.conv(x))))
        return self.fc(torch.cat([self.avg(h), self.max(h)], dim=2).flatten(1))


class UnevenPool2d(nn.Module):
    """2-D pools with uneven, overlapping windows: 7x8 to 3x5 (average) and 7x8 to 5x3 (max)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.avg, self.max = nn.AdaptiveAvgPool2d((3, 5)), nn.AdaptiveMaxPool2d((5, 3))
        self.fc = nn.Linear(4 * 30, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))
        return self.fc(torch.cat([self.avg(h).flatten(1), self.max(h).flatten(1)], dim=1))


@pytest.mark.parametrize(("net", "shape"), [(UnevenPool1d, (4, 2, 30)), (UnevenPool2d, (4, 2, 7, 8))])
def test_uneven_adaptive_pooling_exports_with_parity(tmp_path, capsys, monkeypatch, net, shape):
    from edgetta.export import export_model

    torch.manual_seed(0)
    model = net()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *shape[1:]))
    from torch.onnx._internal.exporter import _fx_passes

    lowering = []  # the exporter's own lowering pass (a full re-trace): not needed after our traced lowering
    original = _fx_passes.decompose_with_registry
    monkeypatch.setattr(_fx_passes, "decompose_with_registry", lambda *a: lowering.append(1) or original(*a))
    seen: list[tuple[str, float]] = []
    manifest = export_model(  # fails unless within tolerance
        model.eval(), torch.randn(*shape), tmp_path / "a", progress=lambda stage, t: seen.append((stage, t))
    )
    # Each stage reported once, in order, with its time; a callback replaces the printed lines.
    assert [s for s, _ in seen] == ["prepare", "trace", "convert", "optimise", "verify"]
    assert all(t >= 0 for _, t in seen) and "edgetta export:" not in capsys.readouterr().err
    assert lowering == []
    results = manifest["verification"]["results"]
    assert [r["bn_alpha"] for r in results] == [0.0, 1.0]
    for r in results:
        assert max(r["logits_infer"], r["logits_adapt"]) < 1e-5 and r["grad_max"] < 1e-4, r
    artifact = load_artifact(tmp_path / "a")
    x = np.random.default_rng(2).standard_normal((1, *shape[1:])).astype(np.float32)  # batch 1 as well
    w = np.ones(1, np.float32)
    out = OrtEngine(artifact, EngineOptions(extra={"graph_cache": False})).adapt(x, artifact.params, 1.0, w, w * 0)
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_rewrite_of_mobilenet_blocks_is_used(artifacts):
    """An expand convolution right after a batch-normalised projection has a batch mean of pure round-off;
    the rewrite's verification judges it against the channels' spread instead of rejecting the graph."""
    path, _ = artifacts.get("mobilenet")
    artifact = load_artifact(path)
    engine = OrtEngine(artifact, EngineOptions(extra={"graph_cache": False}))
    for which in ("infer", "adapt"):
        engine.variant(which, 1.0)
    assert engine.fallbacks == []


def test_rejected_rewrite_is_remembered_quietly(artifacts, tmp_path, monkeypatch, recwarn, capsys):
    path, _ = artifacts.get("resnet_bn")
    artifact = load_artifact(path)
    options = EngineOptions(extra={"graph_cache": str(tmp_path / "graphs")})
    monkeypatch.setattr(OrtEngine, "_verify", lambda self, which, session, alpha: "output logits differs (forced)")
    first = OrtEngine(artifact, options)
    first.variant("infer", 1.0)
    assert first.fallbacks and "forced" in first.fallbacks[0]
    assert list((tmp_path / "graphs").glob("*.rejected.json"))

    def no_rewrite(self, *args):
        raise AssertionError("a rejected rewrite was rewritten again")

    monkeypatch.setattr(OrtEngine, "_rewrite", no_rewrite)
    second = OrtEngine(artifact, options)
    x = np.zeros((2, *artifact.input_shape[1:]), np.float32)
    plain = OrtEngine(artifact, EngineOptions(optimize=False))
    np.testing.assert_array_equal(
        second.infer(x, artifact.params, 1.0)["logits"], plain.infer(x, artifact.params, 1.0)["logits"]
    )
    assert second.fallbacks == first.fallbacks
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert capsys.readouterr().err == ""
