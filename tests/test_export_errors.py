"""Export fails early with a message naming the module, argument or file at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetta.errors import ExportError
from tests.conftest import run_without_torch

torch = pytest.importorskip("torch")
nn = torch.nn

from edgetta.cli import main  # noqa: E402
from edgetta.export import export_model, resolve_spec  # noqa: E402


class NoNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.rnn = nn.LSTM(4, 4, batch_first=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h, _ = self.rnn(self.bn(x).transpose(1, 2))
        return self.fc(h[:, -1])


class SmallBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.head(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_model_without_norm_layers(tmp_path):
    with pytest.raises(ExportError, match="no normalization layers"):
        export_model(NoNorm(), torch.randn(2, 4), tmp_path / "a")


def test_unsupported_layer_on_gradient_path_is_named(tmp_path):
    with pytest.raises(ExportError, match=r"module 'rnn' \(LSTM\).*Supported layers:.*Conv2d"):
        export_model(WithLSTM(), torch.randn(2, 4, 6), tmp_path / "a")


def test_input_shape_that_does_not_fit(tmp_path):
    with pytest.raises(ExportError, match=r"does not accept an input of shape \(2, 3, 8, 8\)"):
        export_model(SmallBN(), torch.randn(2, 3, 8, 8), tmp_path / "a")


def test_trainable_glob_matching_nothing(tmp_path):
    with pytest.raises(ExportError, match=r"trainable glob 'layer9\*' matches no norm layer.*bn"):
        export_model(SmallBN(), torch.randn(2, 1, 8, 8), tmp_path / "a", trainable=["layer9*"])
    with pytest.raises(ExportError, match="frozen glob"):
        export_model(SmallBN(), torch.randn(2, 1, 8, 8), tmp_path / "a", frozen=["nothing*"])


def test_frozen_layers_get_no_gradient(tmp_path):
    manifest = export_model(SmallBN(), torch.randn(4, 1, 8, 8), tmp_path / "a", frozen=["head.*"])
    layers = {la["module"]: la for la in manifest["norm_layers"]}
    assert layers["bn"]["trainable"] and layers["bn"]["weight_grad"] == "bn.weight.grad"
    assert not layers["head.1"]["trainable"] and layers["head.1"]["weight_grad"] is None
    import onnx

    outputs = {o.name for o in onnx.load(str(tmp_path / "a" / "adapt.onnx")).graph.output}
    assert "bn.weight.grad" in outputs and "head.1.weight.grad" not in outputs
    inputs = {i.name for i in onnx.load(str(tmp_path / "a" / "adapt.onnx")).graph.input}
    assert "head.1.weight" in inputs  # frozen norm params remain graph inputs


def test_bad_specs(tmp_path):
    with pytest.raises(ExportError, match="must look like"):
        resolve_spec("no_colon_here")
    with pytest.raises(ExportError, match="does not exist"):
        resolve_spec(str(tmp_path / "missing.py") + ":build")
    model_file = tmp_path / "m.py"
    model_file.write_text("def build():\n    return 42\n")
    with pytest.raises(ExportError, match="has no attribute 'nope'"):
        resolve_spec(f"{model_file}:nope")
    with pytest.raises(ExportError, match="returned int, expected a torch.nn.Module"):
        resolve_spec(f"{model_file}:build")
    with pytest.raises(ExportError, match="cannot import module"):
        resolve_spec("edgetta_no_such_module:build")


def test_cli_export_from_file_spec_with_calib_then_inspect(tmp_path, capsys):
    model_file = tmp_path / "net.py"
    model_file.write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(4*6*6, 3))\n"
    )
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "art"
    code = main(
        [
            "export",
            f"{model_file}:build",
            "--input-shape",
            "2,1,8,8",
            "--out",
            str(out),
            "--class-names",
            "a,b,c",
            "--calib",
            str(calib),
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "verification" in printed and "fisher       from 40 samples" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["input"]["preprocess"] == {
        "mean": [0.5],
        "std": [0.25],
    }
    from safetensors.numpy import load_file

    tensors = load_file(str(out / "params.safetensors"))
    assert np.all(tensors["fisher/1.weight"] >= 0) and tensors["fisher/1.weight"].sum() > 0
    np.testing.assert_array_equal(tensors["anchor/1.weight"], tensors["1.weight"])
    assert main(["inspect", str(out), "--trt-lint"]) == 0

    # Tamper with a graph: inspect reports it and exits non-zero.
    with open(out / "infer.onnx", "ab") as handle:
        handle.write(b"\0")
    assert main(["inspect", str(out)]) == 1
    assert "infer.onnx does not match its sha256" in capsys.readouterr().out


def test_cli_reports_export_errors_cleanly(tmp_path, capsys):
    code = main(["export", "edgetta_no_such_module:build", "--input-shape", "1,3,8,8", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "cannot import module" in capsys.readouterr().err


def test_inspect_never_imports_torch(artifacts):
    path, _ = artifacts.get("resnet_bn")
    result = run_without_torch(f"from edgetta.cli import main\nrc = main(['inspect', {str(path)!r}, '--trt-lint'])\n")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "integrity: all file hashes match" in result.stdout
