"""``Manifest``: the typed content of an artifact's ``manifest.json``, parsed and checked once at load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgetta.contract.names import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GRAPHS,
    INPUT_ROLES,
    MANIFEST_FILE,
    OPTIONAL_OUTPUT_ROLES,
    OUTPUT_ROLES,
    READ_VERSIONS,
    SOFT_INPUT_ROLES,
    SOFT_TARGET_SINCE,
)
from edgetta.contract.norm_layer import NormLayer
from edgetta.errors import ArtifactError


@dataclass(frozen=True)
class InputSpec:
    """The model input: graph name, shape (None = the dynamic batch dimension), dtype, expected preprocessing."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "preprocess": dict(self.preprocess)}


@dataclass(frozen=True)
class FileEntry:
    """A file of the artifact and its sha256; ``ops``: the ONNX op types of a graph file."""

    file: str
    sha256: str
    ops: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        return entry | ({"ops": list(self.ops)} if self.ops else {})


@dataclass(frozen=True)
class FisherInfo:
    """How the diagonal Fisher in params.safetensors was estimated (EATA Eq. 9)."""

    samples: int
    batch_size: int
    bn_alpha: float
    loss: str

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "batch_size": self.batch_size, "bn_alpha": self.bn_alpha, "loss": self.loss}


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime reads from ``manifest.json``. ``raw``: the original dict, for display only
    (exporter versions, verification figures, TensorRT lint result). ``weights``: the external-data file both
    graphs read their frozen weights from (None in artifacts that embed the weights in each graph)."""

    input: InputSpec
    num_classes: int
    class_names: tuple[str, ...]
    graphs: Mapping[str, FileEntry]
    params: FileEntry
    inputs: Mapping[str, str]
    outputs: Mapping[str, str | None]
    norm_layers: tuple[NormLayer, ...]
    classifier: str | None = None
    fisher: FisherInfo | None = None
    source_feature_mean: str | None = None
    opset: int | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    weights: FileEntry | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def input_name(self, role: str) -> str:
        """The graph name of the input with this role (``bn_alpha``, ``entropy_weight``, ``ce_weight``)."""
        return self.inputs[role]

    def has_input(self, role: str) -> bool:
        """Whether the graphs have the input with this role (the soft-target inputs need contract v2)."""
        return role in self.inputs

    def require_soft_target(self, method: str) -> None:
        """Raise a clear error when a method needs the contract-v2 soft-target inputs this artifact lacks."""
        if not all(self.has_input(role) for role in SOFT_INPUT_ROLES):
            raise ArtifactError(
                f"{method} needs the adapt-graph inputs {', '.join(SOFT_INPUT_ROLES)} (artifact contract version 2); "
                f"this artifact is version {self.version} and lacks them: re-export it with edgetta >= "
                f"{SOFT_TARGET_SINCE} (an exporter writing contract version 2)"
            )

    def output_name(self, role: str) -> str | None:
        """The graph name of the output with this role, None when the graphs do not have it."""
        return self.outputs.get(role)

    def files(self) -> list[tuple[str, FileEntry]]:
        """(role, entry) of every file the manifest lists with a hash: the graphs, params and weights."""
        entries = [(f"graphs.{which}", entry) for which, entry in self.graphs.items()] + [("params", self.params)]
        return entries + ([("weights", self.weights)] if self.weights else [])

    def to_json(self) -> dict[str, Any]:
        """The contract's part of manifest.json (an exporter adds its display entries to it)."""
        return {
            "format": self.format,
            "version": self.version,
            "opset": self.opset,
            "input": self.input.to_json(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "graphs": {which: entry.to_json() for which, entry in self.graphs.items()},
            "params": self.params.to_json(),
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "classifier": self.classifier,
            "norm_layers": [layer.to_json() for layer in self.norm_layers],
            "fisher": self.fisher.to_json() if self.fisher else None,
            "source_feature_mean": self.source_feature_mean,
        } | ({"weights": self.weights.to_json()} if self.weights else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any], origin: str = MANIFEST_FILE) -> Manifest:
        """Parse and check a manifest dict; every problem is an ArtifactError naming ``origin`` and the key."""
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{origin} has format {data.get('format')!r}, expected {FORMAT_NAME!r}")
        version = data.get("version")
        if version not in READ_VERSIONS:
            raise ArtifactError(
                f"{origin} is artifact contract version {version}; this edgetta reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}. "
                "Re-export the model with this edgetta version or upgrade edgetta."
            )
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"{origin} is malformed ({type(exc).__name__}: {exc}); the artifact is damaged, re-export it"
            ) from exc


def _parse(data: Mapping[str, Any]) -> Manifest:
    spec = data["input"]
    graphs = data["graphs"]
    missing = [which for which in GRAPHS if which not in graphs]
    if missing:
        raise KeyError(f"graphs.{missing[0]}")
    inputs = {role: str(data["inputs"][role]) for role in INPUT_ROLES}
    if int(data["version"]) >= 2:  # contract v2 adds the soft-target inputs; version 1 lacks them
        inputs |= {role: str(data["inputs"][role]) for role in SOFT_INPUT_ROLES}
    outputs = {role: data["outputs"].get(role) for role in OUTPUT_ROLES}
    absent = [role for role in OUTPUT_ROLES if outputs[role] is None and role not in OPTIONAL_OUTPUT_ROLES]
    if absent:
        raise KeyError(f"outputs.{absent[0]}")
    fisher = data.get("fisher")
    weights = data.get("weights")
    return Manifest(
        format=data["format"],
        version=int(data["version"]),
        opset=data.get("opset"),
        input=InputSpec(
            name=str(spec["name"]),
            shape=tuple(None if d is None else int(d) for d in spec["shape"]),
            dtype=str(spec.get("dtype", "float32")),
            preprocess=dict(spec.get("preprocess") or {}),
        ),
        num_classes=int(data["num_classes"]),
        class_names=tuple(str(c) for c in data["class_names"]),
        graphs=MappingProxyType({which: _file_entry(entry) for which, entry in graphs.items()}),
        params=_file_entry(data["params"]),
        weights=_file_entry(weights) if weights else None,
        inputs=MappingProxyType(inputs),
        outputs=MappingProxyType(outputs),
        norm_layers=tuple(NormLayer.from_json(row) for row in data["norm_layers"]),
        classifier=data.get("classifier"),
        fisher=_fisher_info(fisher) if fisher else None,
        source_feature_mean=data.get("source_feature_mean"),
        raw=MappingProxyType(dict(data)),
    )


def _fisher_info(entry: Mapping[str, Any]) -> FisherInfo:
    return FisherInfo(
        samples=int(entry["samples"]),
        batch_size=int(entry["batch_size"]),
        bn_alpha=float(entry["bn_alpha"]),
        loss=str(entry["loss"]),
    )


def _file_entry(entry: Mapping[str, Any]) -> FileEntry:
    return FileEntry(file=str(entry["file"]), sha256=str(entry["sha256"]), ops=tuple(entry.get("ops", ())))


def read_manifest(path: str | Path) -> Manifest:
    """Read and parse ``manifest.json`` of the artifact directory ``path``."""
    directory = Path(path)
    if directory.name == MANIFEST_FILE and directory.is_file():
        raise ArtifactError(f"pass the artifact directory {directory.parent}, not the manifest file {directory}")
    if directory.is_file():
        raise ArtifactError(
            f"{directory} is a file, not an artifact directory: pass the folder written by `edgetta export`"
        )
    if not directory.is_dir():
        raise ArtifactError(
            f"artifact directory {directory} does not exist: pass the folder written by `edgetta export`"
        )
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST_FILE}: it is not an edgetta artifact (re-run `edgetta export`)"
        )
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged, re-export it"
        ) from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{manifest_path} does not hold a JSON object; the artifact is damaged, re-export it")
    return Manifest.from_json(data, origin=str(manifest_path))
