"""The artifact contract (edgetta.contract): one definition of the norm-layer record, role names, gradient
naming and the typed manifest; version 1 artifacts load unchanged; clear errors for wrong paths."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

import edgetta.contract as contract
from edgetta.contract import (
    BN_ALPHA,
    CE_WEIGHT,
    DATA_INPUT,
    ENTROPY,
    ENTROPY_WEIGHT,
    FEATURES,
    LOGITS,
    LOSS,
    Manifest,
    NormLayer,
    batch_stat_names,
    grad_name,
    load_artifact,
    read_manifest,
)
from edgetta.errors import ArtifactError
from tests.conftest import run_without_torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = [ROOT / "edgetta" / "assets" / "fmnist_resnet_bn", ROOT / "tests" / "assets" / "fmnist_resnet_gn"]


@pytest.fixture(params=BUNDLED, ids=lambda p: p.name)
def bundled(request) -> Path:
    return request.param


def copy_of(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / path.name
    shutil.copytree(path, target)
    return target


# -- names ------------------------------------------------------------------------------------------


def test_gradient_and_statistic_naming():
    assert grad_name("layer1.bn.weight") == "layer1.bn.weight.grad"
    assert batch_stat_names("layer1.bn") == ("layer1.bn.batch_mean", "layer1.bn.batch_var")


def test_bundled_manifests_use_the_role_constants(bundled):
    raw = json.loads((bundled / "manifest.json").read_text())
    assert raw["input"]["name"] == DATA_INPUT
    assert raw["inputs"] == {BN_ALPHA: BN_ALPHA, ENTROPY_WEIGHT: ENTROPY_WEIGHT, CE_WEIGHT: CE_WEIGHT}
    assert raw["outputs"] == {LOGITS: LOGITS, FEATURES: FEATURES, ENTROPY: ENTROPY, LOSS: LOSS}
    assert set(raw["inputs"]) == set(contract.INPUT_ROLES) and set(raw["outputs"]) == set(contract.OUTPUT_ROLES)
    for row in raw["norm_layers"]:
        for param, grad in ((row["weight"], row["weight_grad"]), (row["bias"], row["bias_grad"])):
            assert grad == (grad_name(param) if row["trainable"] and param else None)
        expected = batch_stat_names(row["module"]) if row["kind"] == "batchnorm" else (None, None)
        assert (row["batch_mean"], row["batch_var"]) == expected


# -- NormLayer --------------------------------------------------------------------------------------


def test_norm_layer_declare_follows_the_naming_rules_and_round_trips():
    bn = NormLayer.declare(
        "features.1",
        "batchnorm",
        8,
        True,
        weight="features.1.weight",
        bias="features.1.bias",
        running_mean="features.1.running_mean",
        running_var="features.1.running_var",
    )
    assert bn.weight_grad == "features.1.weight.grad" and bn.bias_grad == "features.1.bias.grad"
    assert (bn.batch_mean, bn.batch_var) == batch_stat_names("features.1")
    assert bn.trainable_inputs == ("features.1.weight", "features.1.bias")
    assert bn.gradients == (
        ("features.1.weight", "features.1.weight.grad"),
        ("features.1.bias", "features.1.bias.grad"),
    )
    assert NormLayer.from_json(bn.to_json()) == bn
    assert list(bn.to_json()) == [
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
    ]
    frozen_ln = NormLayer.declare(
        "ln", "layernorm", 4, False, weight="ln.weight", bias=None, running_mean=None, running_var=None
    )
    assert frozen_ln.weight_grad is None and frozen_ln.batch_mean is None
    assert frozen_ln.trainable_inputs == () and frozen_ln.gradients == ()
    assert NormLayer.from_json(frozen_ln.to_json()) == frozen_ln


def test_norm_layer_rows_of_v1_manifests_round_trip(bundled):
    raw = json.loads((bundled / "manifest.json").read_text())
    for row in raw["norm_layers"]:
        assert NormLayer.from_json(row).to_json() == row


def test_malformed_norm_layer_rows_are_artifact_errors():
    with pytest.raises(ArtifactError, match="lacks"):
        NormLayer.from_json({"module": "bn"})
    with pytest.raises(ArtifactError, match="kind 'weirdnorm'"):
        NormLayer.from_json({"module": "bn", "kind": "weirdnorm", "features": 3, "trainable": True})


def test_there_is_one_norm_layer_record():
    """The export side, the artifact and the engine rewrites use the contract's record (no copies)."""
    from edgetta.engines.ort.rewrite import batchnorm

    assert batchnorm.NormLayer is NormLayer
    for path in (ROOT / "edgetta").rglob("*.py"):
        tree = ast.parse(path.read_text())
        fields = {"weight_grad", "bias_grad", "running_mean", "batch_mean"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and path.parent.name != "contract":
                names = {
                    t.target.id for t in node.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)
                }
                assert not fields <= names, f"{path}: class {node.name} repeats the norm-layer record"


# -- Manifest ---------------------------------------------------------------------------------------


def test_v1_artifacts_lack_the_soft_target_inputs_and_say_how_to_get_them(bundled):
    manifest = load_artifact(bundled).manifest
    assert not manifest.has_input(contract.SOFT_TARGET) and not manifest.has_input(contract.SOFT_WEIGHT)
    with pytest.raises(ArtifactError, match=r"cotta needs .*soft_target.*version 1.*re-export it with edgetta >="):
        manifest.require_soft_target("cotta")


def test_v2_manifests_name_the_soft_target_inputs(bundled):
    raw = json.loads((bundled / "manifest.json").read_text())
    raw["version"] = 2
    raw["inputs"] |= {"soft_target": "teacher_probs", "soft_weight": "teacher_weight"}
    manifest = Manifest.from_json(raw)
    assert manifest.input_name(contract.SOFT_TARGET) == "teacher_probs"
    assert manifest.input_name(contract.SOFT_WEIGHT) == "teacher_weight"
    manifest.require_soft_target("cotta")
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_v1_artifacts_load_unchanged(bundled):
    artifact = load_artifact(bundled)
    raw = json.loads((bundled / "manifest.json").read_text())
    manifest = artifact.manifest
    assert isinstance(manifest, Manifest) and manifest.raw == raw
    assert manifest.format == "edgetta.artifact" and manifest.version == 1
    # The typed manifest writes back exactly what a v1 file holds for every contract key.
    for key, value in manifest.to_json().items():
        assert raw[key] == value, key
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert artifact.input_name == DATA_INPUT and artifact.input_shape[0] is None
    assert artifact.num_classes == len(artifact.class_names) == 10
    assert artifact.preprocess == raw["input"]["preprocess"]
    assert artifact.output_name(LOGITS) == LOGITS and artifact.output_name(FEATURES) == FEATURES
    assert artifact.identity == raw["params"]["sha256"]
    assert artifact.graph_path("adapt") == bundled / "adapt.onnx"
    assert set(artifact.trainable_names) == set(artifact.grad_names)
    assert all(name in artifact.params for name in artifact.trainable_names)
    assert [la.module for la in artifact.norm_layers] == [row["module"] for row in raw["norm_layers"]]


def test_manifest_is_parsed_once(bundled, monkeypatch):
    artifact = load_artifact(bundled)
    assert artifact.norm_layers is artifact.norm_layers
    assert artifact.trainable_names is artifact.trainable_names
    assert artifact.grad_names is artifact.grad_names
    assert artifact.class_names is artifact.class_names
    assert artifact.preprocess is artifact.preprocess

    def reparse(*args, **kwargs):
        raise AssertionError("the manifest was parsed again")

    monkeypatch.setattr(NormLayer, "from_json", reparse)
    monkeypatch.setattr(Manifest, "from_json", reparse)
    for _ in range(3):  # what a step reads
        assert artifact.norm_layers and artifact.trainable_names and artifact.grad_names
        assert artifact.input_shape and artifact.num_classes and artifact.output_name(LOGITS)


def test_an_artifact_without_features_output(bundled, tmp_path):
    path = copy_of(bundled, tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    raw["outputs"][FEATURES] = None
    raw["classifier"] = None
    raw["input"].pop("preprocess")
    (path / "manifest.json").write_text(json.dumps(raw))
    artifact = load_artifact(path)
    assert artifact.output_name(FEATURES) is None and artifact.output_name(LOGITS) == LOGITS
    assert artifact.preprocess == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("norm_layers"), "norm_layers"),
        (lambda m: m["inputs"].pop(BN_ALPHA), "bn_alpha"),
        (lambda m: m["outputs"].update({LOGITS: None}), "outputs.logits"),
        (lambda m: m["graphs"].pop("adapt"), "graphs.adapt"),
        (lambda m: m.update(version=3), "contract version 3"),
        (lambda m: m.update(version=2), "KeyError: 'soft_target'"),
        (lambda m: m.update(format="other"), "format 'other'"),
    ],
)
def test_malformed_manifests_are_named(bundled, tmp_path, edit, message):
    path = copy_of(bundled, tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    edit(raw)
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=message):
        read_manifest(path)


# -- paths ------------------------------------------------------------------------------------------


def test_the_manifest_file_instead_of_the_directory(bundled):
    with pytest.raises(ArtifactError, match=f"pass the artifact directory {bundled}, not the manifest file"):
        load_artifact(bundled / "manifest.json")


def test_a_file_instead_of_a_directory(bundled):
    with pytest.raises(ArtifactError, match="is a file, not an artifact directory"):
        load_artifact(bundled / "infer.onnx")


def test_missing_and_non_artifact_directories(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_artifact(tmp_path)


def test_tampered_files_fail_the_integrity_check(bundled, tmp_path):
    path = copy_of(bundled, tmp_path)
    with open(path / "params.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="params.safetensors does not match its sha256"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="cannot read .*params.safetensors"):
        load_artifact(path, verify_hashes=False)
    with open(path / "infer.onnx", "ab") as handle:
        handle.write(b"\0")
    assert read_manifest(path).num_classes == 10
    problems = contract.check_hashes(path, read_manifest(path))
    assert len(problems) == 2 and any("infer.onnx" in p for p in problems)


# -- layering ---------------------------------------------------------------------------------------


def imported_modules(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def test_contract_imports_only_numpy_json_hashlib_safetensors():
    external = {top(n) for n in imported_modules(ROOT / "edgetta" / "contract")} - {"edgetta"}
    internal = {n for n in imported_modules(ROOT / "edgetta" / "contract") if top(n) == "edgetta"}
    stdlib = {"__future__", "collections", "dataclasses", "pathlib", "types", "typing", "json", "hashlib"}
    assert external <= stdlib | {"numpy", "safetensors"}, external
    assert all(n.startswith("edgetta.contract") or n == "edgetta.errors" for n in internal), internal


@pytest.mark.parametrize("package", ["contract", "engines", "runtime", "safety", "kernels"])
def test_device_packages_never_import_torch_zoo_or_export(package):
    names = imported_modules(ROOT / "edgetta" / package)
    bad = {n for n in names if top(n) == "torch" or n.startswith(("edgetta.zoo", "edgetta.export"))}
    assert not bad, bad


def test_contract_and_engines_import_without_torch():
    body = (
        "import edgetta.contract, edgetta.engines\n"
        "from edgetta.engines import OrtEngine, EngineOptions\n"
        "from edgetta.contract import load_artifact\n"
        f"art = load_artifact({str(BUNDLED[0])!r})\n"
        "import numpy as np\n"
        "x = np.zeros((2, 1, 28, 28), np.float32)\n"
        "out = OrtEngine(art, EngineOptions(optimize=False)).infer(x, art.params, 1.0)\n"
        "assert out['logits'].shape == (2, 10)\n"
        "rc = 0\n"
    )
    result = run_without_torch(body)
    assert result.returncode == 0, result.stderr + result.stdout


def test_contract_alone_imports_neither_onnx_nor_onnxruntime():
    body = (
        "import edgetta.contract\n"
        f"edgetta.contract.load_artifact({str(BUNDLED[0])!r})\n"
        "rc = int('onnx' in sys.modules or 'onnxruntime' in sys.modules)\n"
    )
    result = run_without_torch(body)
    assert result.returncode == 0, result.stderr + result.stdout


def test_zoo_without_torch_says_what_to_install():
    body = (
        "try:\n"
        "    import edgetta.zoo\n"
        "    rc = 1\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "    rc = 0 if \"pip install 'edgetta[export]'\" in str(exc) else 1\n"
    )
    result = run_without_torch(body)
    assert result.returncode == 0, result.stderr + result.stdout
