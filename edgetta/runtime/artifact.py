"""The artifact contract (version 1): reading and checking an exported artifact directory.

An artifact is a directory holding ``manifest.json``, ``infer.onnx``, ``adapt.onnx`` and
``params.safetensors`` (see ../shared/design/architecture.md). This module is torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import ArtifactError

FORMAT_NAME = "edgetta.artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INFER_FILE = "infer.onnx"
ADAPT_FILE = "adapt.onnx"
PARAMS_FILE = "params.safetensors"
FISHER_PREFIX = "fisher/"
ANCHOR_PREFIX = "anchor/"
NORM_KINDS = ("batchnorm", "layernorm", "groupnorm", "instancenorm")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class NormLayer:
    """One normalization layer of the model and the graph names of its tensors."""

    module: str
    kind: str
    features: int
    trainable: bool
    weight: str | None
    bias: str | None
    running_mean: str | None
    running_var: str | None
    batch_mean: str | None
    batch_var: str | None
    weight_grad: str | None
    bias_grad: str | None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> NormLayer:
        return cls(**{name: row.get(name) for name in cls.__dataclass_fields__})

    @property
    def trainable_inputs(self) -> list[str]:
        if not self.trainable:
            return []
        return [name for name in (self.weight, self.bias) if name is not None]


@dataclass
class Artifact:
    """A loaded, hash-checked artifact: its manifest and the source parameter values."""

    path: Path
    manifest: dict[str, Any]
    params: dict[str, np.ndarray]
    fisher: dict[str, np.ndarray]
    anchor: dict[str, np.ndarray]

    @property
    def norm_layers(self) -> list[NormLayer]:
        return [NormLayer.from_json(row) for row in self.manifest["norm_layers"]]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def input_shape(self) -> list[int | None]:
        return list(self.manifest["input"]["shape"])

    @property
    def trainable_names(self) -> list[str]:
        return [name for layer in self.norm_layers for name in layer.trainable_inputs]

    @property
    def grad_names(self) -> dict[str, str]:
        """Map trainable parameter input name -> gradient output name of adapt.onnx."""
        grads: dict[str, str] = {}
        for layer in self.norm_layers:
            if layer.trainable and layer.weight and layer.weight_grad:
                grads[layer.weight] = layer.weight_grad
            if layer.trainable and layer.bias and layer.bias_grad:
                grads[layer.bias] = layer.bias_grad
        return grads

    @property
    def identity(self) -> str:
        """A stable identifier of this artifact's content (the params file hash)."""
        return self.manifest["params"]["sha256"]

    def graph_path(self, which: str) -> Path:
        return self.path / self.manifest["graphs"][which]["file"]


def read_manifest(path: str | Path) -> dict[str, Any]:
    directory = Path(path)
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(
            f"artifact directory {directory} does not exist: pass the folder written by `edgetta export`"
        )
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST_FILE}: it is not an edgetta artifact (re-run `edgetta export`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged, re-export it"
        ) from exc
    if manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{manifest_path} has format {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} is artifact contract version {version}; this edgetta reads version {FORMAT_VERSION}. "
            "Re-export the model with this edgetta version or upgrade edgetta."
        )
    return manifest


def check_hashes(path: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Return one message per file whose sha256 differs from the manifest (empty when intact)."""
    directory = Path(path)
    entries = [(f"graphs.{k}", v) for k, v in manifest["graphs"].items()] + [("params", manifest["params"])]
    problems = []
    for role, entry in entries:
        file_path = directory / entry["file"]
        if not file_path.is_file():
            problems.append(f"{role}: file {entry['file']} is missing")
        elif sha256_file(file_path) != entry["sha256"]:
            problems.append(f"{role}: {entry['file']} does not match its sha256 in the manifest (modified or corrupt)")
    return problems


def load_artifact(path: str | Path, verify_hashes: bool = True) -> Artifact:
    """Read an artifact directory, check its format version and file hashes, load its parameters."""
    from safetensors.numpy import load_file

    directory = Path(path)
    manifest = read_manifest(directory)
    if verify_hashes:
        problems = check_hashes(directory, manifest)
        if problems:
            raise ArtifactError(f"artifact {directory} failed its integrity check: " + "; ".join(problems))
    tensors = load_file(str(directory / manifest["params"]["file"]))
    params = {k: v for k, v in tensors.items() if not k.startswith((FISHER_PREFIX, ANCHOR_PREFIX))}
    fisher = {k[len(FISHER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FISHER_PREFIX)}
    anchor = {k[len(ANCHOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ANCHOR_PREFIX)}
    return Artifact(path=directory, manifest=manifest, params=params, fisher=fisher, anchor=anchor)
