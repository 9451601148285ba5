"""``export_model``: torch model -> artifact directory (contract version 1, edgetta.contract)."""

from __future__ import annotations

import json
import os
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
from safetensors.numpy import save as serialize_tensors

import edgetta
from edgetta.contract import (
    ADAPT_FILE,
    ANCHOR_PREFIX,
    DATA_INPUT,
    ENTROPY,
    FEATURES,
    FISHER_PREFIX,
    INFER_FILE,
    INPUT_ROLES,
    LOGITS,
    LOSS,
    MANIFEST_FILE,
    PARAMS_FILE,
    SOFT_INPUT_ROLES,
    SOURCE_FEATURE_MEAN,
    WEIGHTS_FILE,
    FileEntry,
    FisherInfo,
    InputSpec,
    Manifest,
    grad_name,
    sha256_file,
)
from edgetta.errors import ExportError
from edgetta.export.fisher import fisher_diagonal
from edgetta.export.prepare import PreparedModel, prepare_model
from edgetta.export.progress import Progress, ProgressSetting
from edgetta.export.progress import resolve as resolve_progress
from edgetta.export.trace import extract_infer_graph, optimise_graph, trace_to_onnx
from edgetta.export.verify import assert_within_tolerance, check_parity
from edgetta.export.weights import share_weights
from edgetta.runtime.lint import lint_model

DEFAULT_OPSET = 18


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_output_dir(out: Path) -> None:
    """Fail before any work when ``out`` cannot become an artifact directory."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is an existing file; pass a directory path for the artifact")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        raise ExportError(f"output directory {out} exists, is not empty and is not an artifact; choose another --out")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write the artifact to {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the artifact to {out}: directory {parent} is not writable")


def _check_calibration(calib: np.ndarray, example: torch.Tensor) -> np.ndarray:
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim == 0 or calib.shape[0] == 0:
        raise ExportError("the calibration set is empty: pass at least one in-distribution sample")
    if tuple(calib.shape[1:]) != tuple(example.shape[1:]):
        raise ExportError(
            f"calibration inputs have shape {calib.shape[1:]} per sample; the model takes {tuple(example.shape[1:])}"
        )
    return calib


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
    progress: ProgressSetting = None,
) -> dict[str, Any]:
    """Export ``model`` to an artifact in ``out_dir`` and return its manifest (as written to manifest.json).

    trainable/frozen: module-name globs selecting which norm layers get gradients (all by default).
    calib: in-distribution inputs for EATA's Fisher diagonal (stored with its anchor point).
    verify: parity of both graphs against a float64 torch reference (fails the export if off).
    progress: stage messages (edgetta.export.progress): None prints them to stderr when it is a terminal,
    True always, False never; a callable ``(stage, seconds)`` receives them instead.
    """
    started = time.perf_counter()
    stages = Progress(resolve_progress(progress))
    if not isinstance(example_input, torch.Tensor):
        raise ExportError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    example = example_input.detach().float()
    out = Path(out_dir)
    check_output_dir(out)
    calib = _check_calibration(calib, example) if calib is not None else None
    with stages.stage("prepare"):
        prepared = prepare_model(model, example, trainable=trainable, frozen=frozen, classifier=classifier)
    names = list(class_names) if class_names is not None else [str(i) for i in range(prepared.num_classes)]
    if len(names) != prepared.num_classes:
        raise ExportError(f"{len(names)} class names given but the model outputs {prepared.num_classes} classes")

    staging = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise ExportError(f"cannot write the artifact to {out}: {exc.strerror or exc}") from exc
    try:
        manifest = _write_artifact(
            staging,
            model,
            prepared,
            example,
            opset=opset,
            class_names=names,
            calib=calib,
            calib_batch_size=calib_batch_size,
            verify=verify,
            preprocess=preprocess or {},
            source_feature_mean=source_feature_mean,
            stages=stages,
        )
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write the artifact to {out}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_artifact(
    staging: Path,
    model: nn.Module,
    prepared: PreparedModel,
    example: torch.Tensor,
    *,
    opset: int,
    class_names: list[str],
    calib: np.ndarray | None,
    calib_batch_size: int,
    verify: bool,
    preprocess: dict[str, Any],
    source_feature_mean: np.ndarray | None,
    stages: Progress,
) -> dict[str, Any]:
    """Write the graphs and the parameters into ``staging``; return the manifest (without export_seconds)."""
    trace_to_onnx(prepared, True, example, staging / ADAPT_FILE, opset, stages)
    with stages.stage("optimise"):
        adapt_ops = optimise_graph(staging / ADAPT_FILE, opset)
        infer_ops = extract_infer_graph(prepared, staging / ADAPT_FILE, staging / INFER_FILE)
        share_weights([staging / ADAPT_FILE, staging / INFER_FILE], staging / WEIGHTS_FILE)
    params = {n: prepared.tensor(n).numpy().astype(np.float32) for n in prepared.norm_param_names + prepared.stat_names}
    tensors = dict(params)
    infer_session, adapt_session = _session(staging / INFER_FILE), _session(staging / ADAPT_FILE)

    fisher_info = None
    if calib is not None:
        with stages.stage("fisher"):
            grad_names = {n: grad_name(n) for n in prepared.trainable_names}
            fisher = fisher_diagonal(adapt_session, DATA_INPUT, calib, params, grad_names, calib_batch_size)
        tensors.update({FISHER_PREFIX + n: v for n, v in fisher.items()})
        tensors.update({ANCHOR_PREFIX + n: params[n].copy() for n in fisher})
        fisher_info = FisherInfo(
            samples=int(calib.shape[0]),
            batch_size=calib_batch_size,
            bn_alpha=1.0,
            loss="cross-entropy vs argmax pseudo-label (EATA Eq. 9)",
        )
    if source_feature_mean is not None:
        tensors[SOURCE_FEATURE_MEAN] = np.asarray(source_feature_mean, dtype=np.float32)
    # Written by us (not safetensors' save_file, whose temporary file leaves mode 0600): the usual umask mode.
    (staging / PARAMS_FILE).write_bytes(serialize_tensors(tensors))

    verification = None
    if verify:
        with stages.stage("verify"):
            x = example.numpy().astype(np.float32)
            reports = [check_parity(model, prepared, infer_session, adapt_session, x, a) for a in (0.0, 1.0)]
        verification = {
            "reference": "torch float64, original model",
            "logit_tolerance": 1e-4,
            "grad_tolerance": 5e-3,
            "results": [r.to_json() for r in reports],
        }
        assert_within_tolerance(reports)

    contract = Manifest(
        opset=opset,
        input=InputSpec(name=DATA_INPUT, shape=(None, *example.shape[1:]), dtype="float32", preprocess=preprocess),
        num_classes=prepared.num_classes,
        class_names=tuple(class_names),
        graphs={
            "infer": FileEntry(INFER_FILE, sha256_file(staging / INFER_FILE), tuple(infer_ops)),
            "adapt": FileEntry(ADAPT_FILE, sha256_file(staging / ADAPT_FILE), tuple(adapt_ops)),
        },
        params=FileEntry(PARAMS_FILE, sha256_file(staging / PARAMS_FILE)),
        weights=FileEntry(WEIGHTS_FILE, sha256_file(staging / WEIGHTS_FILE)),
        inputs={role: role for role in INPUT_ROLES + SOFT_INPUT_ROLES},
        outputs={LOGITS: LOGITS, FEATURES: FEATURES if prepared.classifier else None, ENTROPY: ENTROPY, LOSS: LOSS},
        norm_layers=tuple(prepared.layers),
        classifier=prepared.classifier,
        fisher=fisher_info,
        source_feature_mean=SOURCE_FEATURE_MEAN if source_feature_mean is not None else None,
    )
    lint = {
        which: lint_model(onnx.load(str(staging / entry.file), load_external_data=False)).to_json()
        for which, entry in contract.graphs.items()
    }
    return {
        **contract.to_json(),
        "exporter": {
            "edgetta": edgetta.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "model": type(model).__name__,
        "verification": verification,
        "trt_lint": lint,
    }
