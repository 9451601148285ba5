"""``export_model``: torch model -> artifact directory (contract version 1)."""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from safetensors.numpy import save_file

import edgetta
from edgetta.errors import ExportError
from edgetta.export.fisher import fisher_diagonal
from edgetta.export.prepare import prepare_model
from edgetta.export.trace import (
    BN_ALPHA,
    CE_WEIGHT,
    ENTROPY,
    ENTROPY_WEIGHT,
    FEATURES,
    INPUT,
    LOGITS,
    LOSS,
    extract_infer_graph,
    trace_to_onnx,
)
from edgetta.export.verify import assert_within_tolerance, check_parity
from edgetta.runtime.artifact import (
    ADAPT_FILE,
    ANCHOR_PREFIX,
    FISHER_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    INFER_FILE,
    MANIFEST_FILE,
    PARAMS_FILE,
    sha256_file,
)
from edgetta.runtime.lint import lint_model

DEFAULT_OPSET = 18


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    *,
    trainable: Sequence[str] | None = None,
    frozen: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    classifier: str | None = None,
    opset: int = DEFAULT_OPSET,
    calib: np.ndarray | None = None,
    calib_batch_size: int = 64,
    verify: bool = True,
    preprocess: dict[str, Any] | None = None,
    source_feature_mean: np.ndarray | None = None,
) -> dict[str, Any]:
    """Export ``model`` to an artifact in ``out_dir`` and return its manifest.

    trainable/frozen: module-name globs selecting which norm layers get gradients (all by default).
    calib: in-distribution inputs for EATA's Fisher diagonal (stored with its anchor point).
    verify: parity of both graphs against a float64 torch reference (fails the export if off).
    """
    started = time.perf_counter()
    if not isinstance(example_input, torch.Tensor):
        raise ExportError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    example = example_input.detach().float()
    prepared = prepare_model(model, example, trainable=trainable, frozen=frozen, classifier=classifier)
    num_classes = prepared.num_classes
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ExportError(f"{len(names)} class names given but the model outputs {num_classes} classes")

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        raise ExportError(f"output directory {out} exists, is not empty and is not an artifact; choose another --out")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    adapt_ops = trace_to_onnx(prepared, True, example, staging / ADAPT_FILE, opset)
    infer_ops = extract_infer_graph(prepared, staging / ADAPT_FILE, staging / INFER_FILE)
    params = {n: prepared.tensor(n).numpy().astype(np.float32) for n in prepared.norm_param_names + prepared.stat_names}
    tensors = dict(params)
    infer_session, adapt_session = _session(staging / INFER_FILE), _session(staging / ADAPT_FILE)

    fisher_info = None
    if calib is not None:
        calib = np.asarray(calib, dtype=np.float32)
        if tuple(calib.shape[1:]) != tuple(example.shape[1:]):
            raise ExportError(
                f"calibration inputs have shape {calib.shape[1:]} per sample; the model takes "
                f"{tuple(example.shape[1:])}"
            )
        grad_names = {n: f"{n}.grad" for n in prepared.trainable_names}
        fisher = fisher_diagonal(adapt_session, INPUT, calib, params, grad_names, calib_batch_size)
        tensors.update({FISHER_PREFIX + n: v for n, v in fisher.items()})
        tensors.update({ANCHOR_PREFIX + n: params[n].copy() for n in fisher})
        fisher_info = {
            "samples": int(calib.shape[0]),
            "batch_size": calib_batch_size,
            "bn_alpha": 1.0,
            "loss": "cross-entropy vs argmax pseudo-label (EATA Eq. 9)",
        }
    if source_feature_mean is not None:
        tensors["source/feature_mean"] = np.asarray(source_feature_mean, dtype=np.float32)
    save_file(tensors, str(staging / PARAMS_FILE))

    verification = None
    if verify:
        x = example.numpy().astype(np.float32)
        reports = [check_parity(model, prepared, infer_session, adapt_session, x, a) for a in (0.0, 1.0)]
        verification = {
            "reference": "torch float64, original model",
            "logit_tolerance": 1e-4,
            "grad_tolerance": 5e-3,
            "results": [r.to_json() for r in reports],
        }
        assert_within_tolerance(reports)

    lint = {
        which: lint_model(onnx.load(str(staging / f))).to_json()
        for which, f in (("infer", INFER_FILE), ("adapt", ADAPT_FILE))
    }
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "exporter": {
            "edgetta": edgetta.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "opset": opset,
        "model": type(model).__name__,
        "input": {
            "name": INPUT,
            "shape": [None] + list(example.shape[1:]),
            "dtype": "float32",
            "preprocess": preprocess or {},
        },
        "num_classes": num_classes,
        "class_names": names,
        "graphs": {
            "infer": {"file": INFER_FILE, "sha256": sha256_file(staging / INFER_FILE), "ops": infer_ops},
            "adapt": {"file": ADAPT_FILE, "sha256": sha256_file(staging / ADAPT_FILE), "ops": adapt_ops},
        },
        "params": {"file": PARAMS_FILE, "sha256": sha256_file(staging / PARAMS_FILE)},
        "inputs": {"bn_alpha": BN_ALPHA, "entropy_weight": ENTROPY_WEIGHT, "ce_weight": CE_WEIGHT},
        "outputs": {
            "logits": LOGITS,
            "features": FEATURES if prepared.classifier else None,
            "entropy": ENTROPY,
            "loss": LOSS,
        },
        "classifier": prepared.classifier,
        "norm_layers": [layer.to_manifest() for layer in prepared.layers],
        "fisher": fisher_info,
        "source_feature_mean": "source/feature_mean" if source_feature_mean is not None else None,
        "verification": verification,
        "trt_lint": lint,
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest
