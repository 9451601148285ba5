"""The artifact contract (version 1), defined once: names and roles, the norm-layer record, the typed
manifest and the loaded artifact. numpy, json, hashlib and safetensors only; every other layer imports it.

An artifact is a directory holding ``manifest.json``, ``infer.onnx``, ``adapt.onnx``,
``params.safetensors`` and ``weights.bin`` (README "The artifact").
"""

from edgetta.contract.artifact import Artifact, check_hashes, load_artifact, sha256_file
from edgetta.contract.manifest import FileEntry, FisherInfo, InputSpec, Manifest, read_manifest
from edgetta.contract.names import (
    ADAPT_FILE,
    ANCHOR_PREFIX,
    BN_ALPHA,
    CE_WEIGHT,
    DATA_INPUT,
    ENTROPY,
    ENTROPY_WEIGHT,
    FEATURES,
    FISHER_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    GRAPHS,
    INFER_FILE,
    INPUT_ROLES,
    LOGITS,
    LOSS,
    MANIFEST_FILE,
    NORM_KINDS,
    OUTPUT_ROLES,
    PARAMS_FILE,
    SOURCE_FEATURE_MEAN,
    WEIGHTS_FILE,
    batch_stat_names,
    grad_name,
)
from edgetta.contract.norm_layer import NormLayer

__all__ = [
    "ADAPT_FILE",
    "ANCHOR_PREFIX",
    "Artifact",
    "BN_ALPHA",
    "CE_WEIGHT",
    "DATA_INPUT",
    "ENTROPY",
    "ENTROPY_WEIGHT",
    "FEATURES",
    "FISHER_PREFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FileEntry",
    "FisherInfo",
    "GRAPHS",
    "INFER_FILE",
    "INPUT_ROLES",
    "InputSpec",
    "LOGITS",
    "LOSS",
    "MANIFEST_FILE",
    "Manifest",
    "NORM_KINDS",
    "NormLayer",
    "OUTPUT_ROLES",
    "PARAMS_FILE",
    "SOURCE_FEATURE_MEAN",
    "WEIGHTS_FILE",
    "batch_stat_names",
    "check_hashes",
    "grad_name",
    "load_artifact",
    "read_manifest",
    "sha256_file",
]
