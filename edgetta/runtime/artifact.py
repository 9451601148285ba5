"""Temporary re-export: the artifact contract now lives in edgetta.contract (import it from there)."""

from edgetta.contract import Artifact, NormLayer, check_hashes, load_artifact, read_manifest, sha256_file  # noqa: F401
