"""Export fails early with a message naming the module, argument or file at fault."""

from __future__ import annotations

import json
import os
import stat

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


# -- output directory, SPEC functions, calibration files: clear errors before any work ---------------


def export_cli(tmp_path, *extra: str, spec: str | None = None, out=None) -> list[str]:
    if spec is None:
        model_file = tmp_path / "net.py"
        model_file.write_text(
            "import torch.nn as nn\n"
            "def build():\n"
            "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),\n"
            "                         nn.Flatten(), nn.Linear(144, 3))\n"
        )
        spec = f"{model_file}:build"
    return ["export", spec, "--input-shape", "2,1,8,8", "--out", str(out or tmp_path / "art"), *extra]


def cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("edgetta export: error: ")
    return err


def test_out_is_an_existing_file(tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("not an artifact")
    err = cli_error(export_cli(tmp_path, out=target), capsys)
    assert f"--out {target} is an existing file" in err
    with pytest.raises(ExportError, match="is an existing file"):
        export_model(SmallBN(), torch.randn(2, 1, 8, 8), target)
    assert target.read_text() == "not an artifact"


def test_out_below_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = cli_error(export_cli(tmp_path, out=tmp_path / "file" / "art"), capsys)
    assert "is a file, not a directory" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_an_unwritable_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = cli_error(export_cli(tmp_path, out=locked / "art"), capsys)
    finally:
        locked.chmod(0o700)
    assert "is not writable" in err


def test_a_failed_export_leaves_no_partial_folder(tmp_path, monkeypatch):
    import edgetta.export.api as api

    def broken(*args, **kwargs):
        raise ExportError("tracing failed")

    monkeypatch.setattr(api, "trace_to_onnx", broken)
    with pytest.raises(ExportError, match="tracing failed"):
        export_model(SmallBN(), torch.randn(2, 1, 8, 8), tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_spec_function_that_needs_arguments(tmp_path, capsys):
    model_file = tmp_path / "m.py"
    model_file.write_text(
        "import torch.nn as nn\n"
        "def make(width, depth=2):\n"
        "    return nn.Sequential(nn.BatchNorm1d(width))\n"
        "def broken():\n"
        "    raise RuntimeError('weights missing')\n"
    )
    with pytest.raises(ExportError, match=r"make\(\) needs argument\(s\) width.*callable without arguments"):
        resolve_spec(f"{model_file}:make")
    err = cli_error(export_cli(tmp_path, spec=f"{model_file}:make"), capsys)
    assert "make() needs argument(s) width" in err and "must be callable without arguments" in err
    with pytest.raises(ExportError, match=r"calling broken\(\) failed: RuntimeError: weights missing"):
        resolve_spec(f"{model_file}:broken")


def test_calibration_file_problems(tmp_path, capsys):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 1, 8, 8), np.float32))
    assert "holds a single .npy array, not an NPZ archive" in cli_error(
        export_cli(tmp_path, "--calib", str(npy)), capsys
    )
    no_x = tmp_path / "no_x.npz"
    np.savez(no_x, inputs=np.zeros((4, 1, 8, 8), np.float32))
    assert "has no array 'x' (it has: inputs)" in cli_error(export_cli(tmp_path, "--calib", str(no_x)), capsys)
    text = tmp_path / "calib.npz"
    text.write_text("these are not arrays\n")
    assert "is not an NPZ archive" in cli_error(export_cli(tmp_path, "--calib", str(text)), capsys)
    missing = tmp_path / "missing.npz"
    assert "does not exist" in cli_error(export_cli(tmp_path, "--calib", str(missing)), capsys)
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.zeros(4, np.float32))
    assert "batch dimension first" in cli_error(export_cli(tmp_path, "--calib", str(flat)), capsys)
    assert not (tmp_path / "art").exists()


def test_calibration_shape_is_checked_before_tracing(tmp_path):
    with pytest.raises(ExportError, match="calibration inputs have shape"):
        export_model(SmallBN(), torch.randn(2, 1, 8, 8), tmp_path / "a", calib=np.zeros((4, 1, 9, 9), np.float32))


def test_bad_mean_is_an_export_error(tmp_path, capsys):
    assert "--mean 'a,b' must be comma-separated numbers" in cli_error(export_cli(tmp_path, "--mean", "a,b"), capsys)


def test_artifact_files_share_one_file_mode(artifacts):
    path, _ = artifacts.get("resnet_bn")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert set(modes) == {"manifest.json", "infer.onnx", "adapt.onnx", "params.safetensors", "weights.bin"}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes
