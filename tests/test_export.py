"""Export: every model family exports, verifies against float64 torch, passes the TensorRT lint and
runs in ONNX Runtime at batch 1 and 64 with the source model's outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import FAMILY_CONFIGS, make_family_model

torch = pytest.importorskip("torch")

FAMILIES = list(FAMILY_CONFIGS)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feed(manifest, params, x, alpha):
    return {manifest["input"]["name"]: x, manifest["inputs"]["bn_alpha"]: np.asarray(alpha, np.float32), **params}


def _no_soft_target(manifest, batch):
    """Zero soft cross-entropy inputs (contract v2): the soft term then adds nothing."""
    classes = manifest["num_classes"]
    return {"soft_target": np.zeros((batch, classes), np.float32), "soft_weight": np.zeros(batch, np.float32)}


def test_soft_target_term_is_exactly_absent_at_zero_weight_and_matches_the_pseudo_label_ce(artifacts):
    """soft_weight = 0 leaves every output bit-identical whatever the soft target (the gradients are those of
    the v1 loss); a one-hot soft target at the argmax with weight w gives the gradients of ce_weight = w."""
    from safetensors.numpy import load_file

    path, manifest = artifacts.get("resnet_bn")
    params = load_file(str(path / "params.safetensors"))
    adapt = _session(path / "adapt.onnx")
    names = [o.name for o in adapt.get_outputs()]
    rng = np.random.default_rng(7)
    batch, classes = 8, manifest["num_classes"]
    x = rng.normal(size=(batch, *manifest["input"]["shape"][1:])).astype(np.float32)
    base = _feed(manifest, params, x, 1.0) | {
        "entropy_weight": np.full(batch, 1.0 / batch, np.float32),
        "ce_weight": np.full(batch, 0.3 / batch, np.float32),
    }
    zero = dict(zip(names, adapt.run(None, base | _no_soft_target(manifest, batch))))
    target = rng.dirichlet(np.ones(classes), size=batch).astype(np.float32)
    ignored = dict(
        zip(names, adapt.run(None, base | {"soft_target": target, "soft_weight": np.zeros(batch, np.float32)}))
    )
    for name in names:
        np.testing.assert_array_equal(ignored[name], zero[name], err_msg=name)

    w = np.full(batch, 0.5 / batch, np.float32)
    nothing = np.zeros(batch, np.float32)
    pseudo = dict(
        zip(
            names,
            adapt.run(None, base | {"entropy_weight": nothing, "ce_weight": w} | _no_soft_target(manifest, batch)),
        )
    )
    onehot = np.eye(classes, dtype=np.float32)[zero["logits"].argmax(1)]
    soft = base | {"entropy_weight": nothing, "ce_weight": nothing, "soft_target": onehot, "soft_weight": w}
    soft_out = dict(zip(names, adapt.run(None, soft)))
    grads = [g for g in names if g.endswith(".grad")]
    total = np.sqrt(sum(float(np.sum(pseudo[g] ** 2)) for g in grads))
    assert total > 0
    for g in grads:
        np.testing.assert_allclose(soft_out[g], pseudo[g], atol=1e-4 * total, rtol=1e-3, err_msg=g)
    np.testing.assert_allclose(soft_out["loss"], pseudo["loss"], rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_exports_with_parity_and_lint(artifacts, family):
    path, manifest = artifacts.get(family)
    results = manifest["verification"]["results"]
    assert [r["bn_alpha"] for r in results] == [0.0, 1.0]
    for r in results:
        assert max(r["logits_infer"], r["logits_adapt"]) <= 1e-4
        assert r["grad_max"] <= 5e-3
    assert manifest["trt_lint"]["infer"]["ok"] and manifest["trt_lint"]["adapt"]["ok"]
    for graph in ("infer", "adapt"):
        model = onnx.load(str(path / manifest["graphs"][graph]["file"]))
        onnx.checker.check_model(model)
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
        assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_at_batch_1_and_64_like_torch(artifacts, family):
    from safetensors.numpy import load_file

    path, manifest = artifacts.get(family)
    model, shape = make_family_model(family)
    params = load_file(str(path / "params.safetensors"))
    infer, adapt = _session(path / "infer.onnx"), _session(path / "adapt.onnx")
    grad_outputs = [la["weight_grad"] for la in manifest["norm_layers"] if la["weight_grad"]]
    for batch in (1, 64):
        x = np.random.default_rng(batch).normal(size=(batch, *shape[1:])).astype(np.float32)
        logits = infer.run(["logits"], _feed(manifest, params, x, 0.0))[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert logits.shape == (batch, manifest["num_classes"])
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)
        feed = _feed(manifest, params, x, 1.0)
        feed["entropy_weight"] = np.full(batch, 1.0 / batch, np.float32)
        feed["ce_weight"] = np.zeros(batch, np.float32)
        feed |= _no_soft_target(manifest, batch)
        names = [o.name for o in adapt.get_outputs()]
        out = dict(zip(names, adapt.run(None, feed)))
        assert out["entropy"].shape == (batch,)
        for g in grad_outputs:
            assert np.all(np.isfinite(out[g]))
        if batch == 64:  # train-mode BN reference at bn_alpha = 1
            ref = make_family_model(family)[0]
            for m in ref.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.train()
            with torch.no_grad():
                np.testing.assert_allclose(out["logits"], ref(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


def test_manifest_contract_keys(artifacts):
    path, _ = artifacts.get("resnet_bn")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "edgetta.artifact" and manifest["version"] == 2
    assert manifest["input"]["shape"][0] is None and manifest["input"]["dtype"] == "float32"
    assert set(manifest["graphs"]) == {"infer", "adapt"}
    assert set(manifest["inputs"]) == {"bn_alpha", "entropy_weight", "ce_weight", "soft_target", "soft_weight"}
    assert set(manifest["outputs"]) == {"logits", "features", "entropy", "loss"}
    keys = {
        "module",
        "kind",
        "features",
        "trainable",
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "batch_mean",
        "batch_var",
        "weight_grad",
        "bias_grad",
    }
    for layer in manifest["norm_layers"]:
        assert keys <= set(layer)
    adapt = onnx.load(str(path / "adapt.onnx"))
    graph_inputs = {i.name for i in adapt.graph.input}
    graph_outputs = {o.name for o in adapt.graph.output}
    for layer in manifest["norm_layers"]:
        assert {layer["weight"], layer["bias"], layer["running_mean"], layer["running_var"]} <= graph_inputs
        assert {layer["batch_mean"], layer["batch_var"], layer["weight_grad"], layer["bias_grad"]} <= graph_outputs
    # Non-norm weights stay constants: every float initializer is a conv/linear weight, not a graph input.
    assert not any(i.name.endswith("conv1.weight") for i in adapt.graph.input)


def test_dropout_and_maxpool_family_gradients_match_torch(artifacts):
    """The sleep CNN (BatchNorm1d, max-pool, dropout) adapt graph gives torch's train-mode BN gradients."""
    from safetensors.numpy import load_file

    path, manifest = artifacts.get("sleep_cnn")
    model, shape = make_family_model("sleep_cnn")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.train()
            m.momentum = 0.0
    x = np.random.default_rng(3).normal(size=(16, *shape[1:])).astype(np.float32)
    params = load_file(str(path / "params.safetensors"))
    feed = _feed(manifest, params, x, 1.0)
    feed["entropy_weight"] = np.full(16, 1 / 16, np.float32)
    feed["ce_weight"] = np.zeros(16, np.float32)
    feed |= _no_soft_target(manifest, 16)
    adapt = _session(path / "adapt.onnx")
    out = dict(zip([o.name for o in adapt.get_outputs()], adapt.run(None, feed)))
    logits = model(torch.from_numpy(x))
    p = logits.softmax(1)
    loss = -(p * logits.log_softmax(1)).sum(1).mean()
    bn = model.features[1]
    gw, gb = torch.autograd.grad(loss, [bn.weight, bn.bias])
    np.testing.assert_allclose(out["features.1.weight.grad"], gw.numpy(), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(out["features.1.bias.grad"], gb.numpy(), rtol=2e-3, atol=1e-6)
