"""``Artifact``: a loaded, hash-checked artifact directory (manifest, graphs on disk, parameter values)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edgetta.contract.manifest import Manifest, read_manifest
from edgetta.contract.names import ANCHOR_PREFIX, FISHER_PREFIX
from edgetta.contract.norm_layer import NormLayer
from edgetta.errors import ArtifactError


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hashes(path: str | Path, manifest: Manifest) -> list[str]:
    """Return one message per file whose sha256 differs from the manifest (empty when intact)."""
    directory = Path(path)
    problems = []
    for role, entry in manifest.files():
        file_path = directory / entry.file
        if not file_path.is_file():
            problems.append(f"{role}: file {entry.file} is missing")
        elif sha256_file(file_path) != entry.sha256:
            problems.append(f"{role}: {entry.file} does not match its sha256 in the manifest (modified or corrupt)")
    return problems


@dataclass
class Artifact:
    """A loaded artifact: its typed manifest and the source parameter values (keyed by graph-input name).
    ``fisher``/``anchor``: EATA's diagonal Fisher and its anchor point (empty unless exported with --calib).
    Everything derived from the manifest is computed once, here."""

    path: Path
    manifest: Manifest
    params: dict[str, np.ndarray]
    fisher: dict[str, np.ndarray] = field(default_factory=dict)
    anchor: dict[str, np.ndarray] = field(default_factory=dict)
    _trainable: tuple[str, ...] = field(init=False, repr=False)
    _grads: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        layers = self.manifest.norm_layers
        self._trainable = tuple(name for layer in layers for name in layer.trainable_inputs)
        self._grads = MappingProxyType({param: grad for layer in layers for param, grad in layer.gradients})

    @property
    def norm_layers(self) -> tuple[NormLayer, ...]:
        return self.manifest.norm_layers

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def input_name(self) -> str:
        return self.manifest.input.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The input shape; the first (batch) dimension is None."""
        return self.manifest.input.shape

    @property
    def preprocess(self) -> dict[str, Any]:
        """The preprocessing the model expects (e.g. scale, mean, std, layout); may be empty."""
        return self.manifest.input.preprocess

    @property
    def trainable_names(self) -> tuple[str, ...]:
        """Graph inputs adaptation may change, in norm-layer order."""
        return self._trainable

    @property
    def grad_names(self) -> Mapping[str, str]:
        """Trainable parameter input name -> gradient output name of adapt.onnx."""
        return self._grads

    @property
    def identity(self) -> str:
        """A stable identifier of this artifact's content (the params file hash)."""
        return self.manifest.params.sha256

    def output_name(self, role: str) -> str | None:
        """The graph name of the output with this role (``logits``, ``features``, ...); None when absent."""
        return self.manifest.output_name(role)

    def graph_path(self, which: str) -> Path:
        """The file of graph ``which`` ("infer" or "adapt")."""
        return self.path / self.manifest.graphs[which].file


def load_artifact(path: str | Path, verify_hashes: bool = True) -> Artifact:
    """Read an artifact directory, check its format version and file hashes, load its parameters."""
    from safetensors.numpy import load_file

    directory = Path(path)
    manifest = read_manifest(directory)
    if verify_hashes:
        problems = check_hashes(directory, manifest)
        if problems:
            raise ArtifactError(f"artifact {directory} failed its integrity check: " + "; ".join(problems))
    try:
        tensors = load_file(str(directory / manifest.params.file))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ArtifactError(f"cannot read {directory / manifest.params.file} ({exc}); re-export the artifact") from exc
    params = {k: v for k, v in tensors.items() if not k.startswith((FISHER_PREFIX, ANCHOR_PREFIX))}
    fisher = {k[len(FISHER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FISHER_PREFIX)}
    anchor = {k[len(ANCHOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ANCHOR_PREFIX)}
    return Artifact(path=directory, manifest=manifest, params=params, fisher=fisher, anchor=anchor)
