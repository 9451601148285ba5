"""``edgetta keys ...`` and ``edgetta bundle ...`` commands (docs/bundles.md).

Each command prints one JSON line on stdout. ``bundle verify`` exits 0 when the bundle would be applied and
1 with ``{"ok": false, "code": ..., "reason": ...}`` when it would be refused; bad arguments (a missing
artifact, an unreadable key) exit 2 with a message on stderr, like every edgetta command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True))


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edgetta.sync.keys import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(args.out)
    _emit({"key_id": key_id(load_public_key(public)), "private": str(private), "public": str(public)})
    return 0


def cmd_bundle_create(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors.numpy import load_file

    from edgetta.atomic_io import write_atomic
    from edgetta.contract import load_artifact
    from edgetta.errors import DataError
    from edgetta.sync.bundle import base_sha256, create_bundle
    from edgetta.sync.keys import key_id, load_private_key

    artifact = load_artifact(args.artifact)
    key = load_private_key(args.key)
    try:
        params = load_file(args.params)
    except FileNotFoundError:
        raise DataError(f"--params {args.params} does not exist") from None
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise DataError(f"--params {args.params} is not a safetensors file ({exc})") from None
    data = create_bundle(artifact, params, version=args.version, private_key=key, expires_in=args.expires_in)
    out = Path(args.out)
    write_atomic(out, data)
    _emit(
        {
            "base_sha256": base_sha256(artifact),
            "bundle": str(out),
            "bytes": len(data),
            "key_id": key_id(key),
            "tensors": len(params),
            "version": args.version,
        }
    )
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from edgetta.contract import load_artifact
    from edgetta.errors import BundleRejected
    from edgetta.sync.bundle import MAX_BUNDLE_BYTES, read_bundle_file, verify_bundle
    from edgetta.sync.keys import load_public_key

    artifact = load_artifact(args.artifact)
    trusted = [load_public_key(path) for path in args.trust]
    max_bytes = args.max_bytes or MAX_BUNDLE_BYTES
    try:
        data = read_bundle_file(args.bundle, max_bytes=max_bytes)
        bundle = verify_bundle(
            data,
            artifact_dir=artifact,
            trusted_keys=trusted,
            applied_version=args.applied_version,
            max_bytes=max_bytes,
        )
    except BundleRejected as exc:
        _emit({"bundle": args.bundle, "code": exc.code, "ok": False, "reason": exc.reason})
        return 1
    meta = bundle.metadata
    _emit(
        {
            "bundle": args.bundle,
            "created": meta["created"],
            "expires": meta["expires"],
            "key_id": bundle.key_id,
            "ok": True,
            "payload_sha256": meta["payload_sha256"],
            "tensors": sorted(bundle.params),
            "version": bundle.version,
        }
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keys`` and ``bundle`` to the ``edgetta`` parser (imports nothing: commands import what they use)."""
    keys = sub.add_parser("keys", help="Ed25519 keys that sign parameter bundles")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("generate", help="write DIR/private.pem (mode 0600) and DIR/public.pem")
    p.add_argument("--out", required=True, help="directory for the key pair (existing keys are never overwritten)")
    p.set_defaults(func=cmd_keys_generate)

    bundle = sub.add_parser("bundle", help="create and verify signed parameter bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    p = bundle_sub.add_parser("create", help="sign norm-layer parameters for an artifact into one bundle file")
    p.add_argument("--artifact", required=True, help="the base artifact directory the devices run")
    p.add_argument("--params", required=True, help="safetensors file: a subset of the artifact's norm tensors")
    p.add_argument("--version", required=True, type=_positive_int, help="bundle version, above every earlier one")
    p.add_argument("--key", required=True, help="private.pem written by `edgetta keys generate`")
    p.add_argument("--expires-in", type=_seconds, metavar="SECONDS", help="devices refuse the bundle after this")
    p.add_argument("--out", required=True, help="bundle file to write")
    p.set_defaults(func=cmd_bundle_create)

    p = bundle_sub.add_parser("verify", help="check a bundle as a device would: exit 0 if it would be applied")
    p.add_argument("bundle", help="bundle file")
    p.add_argument("--artifact", required=True, help="the base artifact directory the device runs")
    p.add_argument("--trust", required=True, action="append", metavar="PUBLIC", help="trusted public.pem (repeat)")
    p.add_argument("--applied-version", type=int, metavar="N", help="version the device runs now (refuse <= N)")
    p.add_argument("--max-bytes", type=_positive_int, help="largest bundle accepted (default 16 MiB)")
    p.set_defaults(func=cmd_bundle_verify)
