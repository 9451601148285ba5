"""Signed parameter bundles: every way a bundle is refused, each as its own test (docs/bundles.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save as st_save

from edgetta.contract import load_artifact, sha256_file
from edgetta.errors import BundleRejected, ConfigError, EdgettaError
from edgetta.sync.bundle import (
    MAGIC,
    REJECTION_CODES,
    allowed_tensors,
    base_sha256,
    canonical_json,
    create_bundle,
    read_bundle_file,
    sign_frame,
    verify_bundle,
)
from edgetta.sync.keys import key_id

ASSET = Path(__file__).resolve().parents[1] / "edgetta" / "assets" / "fmnist_resnet_bn"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def artifact():
    return load_artifact(ASSET)


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def params(artifact):
    """A plausible cloud update: every trainable weight scaled, every bias shifted."""
    out = {}
    for name in artifact.trainable_names:
        value = artifact.params[name]
        out[name] = (value * 1.05 if name.endswith("weight") else value + 0.01).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def bundle(artifact, params, key):
    return create_bundle(artifact, params, version=5, private_key=key, expires_in=3600, now=NOW)


def head_size(data: bytes) -> int:
    """Offset of the signature: 14-byte fixed header + metadata."""
    return 14 + struct.unpack_from("<I", data, 10)[0]


def metadata_of(data: bytes) -> dict:
    return json.loads(data[14 : head_size(data)])


def payload_of(data: bytes) -> bytes:
    return data[head_size(data) + 64 :]


def signed(key, payload: bytes, artifact, **overrides) -> bytes:
    """A correctly signed bundle around ``payload`` whose metadata fields are ``overrides`` on top of a
    valid set: what a buggy or compromised-but-trusted issuer could produce."""
    meta = {
        "format": "edgetta.bundle",
        "format_version": 1,
        "version": 5,
        "base_sha256": base_sha256(artifact),
        "created": NOW,
        "expires": NOW + 3600,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_size": len(payload),
        "key_id": key_id(key),
    }
    meta.update(overrides)
    meta = {k: v for k, v in meta.items() if v != "<drop>"}
    raw = canonical_json({k: (0.0 if v == "<inf>" else v) for k, v in meta.items()})
    for k, v in meta.items():
        if v == "<inf>":  # a number JSON readers turn into infinity
            raw = raw.replace(f'"{k}":0.0'.encode(), f'"{k}":1e400'.encode())
    return sign_frame(raw, payload, key)


def rejected(data: bytes, artifact, key, **kwargs) -> BundleRejected:
    kwargs.setdefault("now", NOW + 1)
    with pytest.raises(BundleRejected) as info:
        verify_bundle(data, artifact_dir=artifact, trusted_keys=[key.public_key()], **kwargs)
    assert info.value.code in REJECTION_CODES
    assert isinstance(info.value, EdgettaError) and str(info.value)
    return info.value


# -- accepted ---------------------------------------------------------------------------------------------
def test_valid_bundle_round_trips(artifact, params, key, bundle):
    assert bundle[:8] == MAGIC
    got = verify_bundle(bundle, artifact_dir=artifact, trusted_keys=[key.public_key()], applied_version=4, now=NOW)
    assert got.version == 5 and got.key_id == key_id(key)
    assert set(got.params) == set(params)
    for name, value in params.items():
        np.testing.assert_array_equal(got.params[name], value)
        assert got.params[name].dtype == np.float32 and got.params[name].flags.writeable
    meta = got.metadata
    assert meta["base_sha256"] == base_sha256(artifact) and meta["expires"] == NOW + 3600
    assert meta["payload_size"] == len(payload_of(bundle))
    assert meta["payload_sha256"] == hashlib.sha256(payload_of(bundle)).hexdigest()


def test_verify_reads_artifact_directory_and_pem_paths(tmp_path, params, bundle, key):
    from edgetta.sync.keys import generate_keypair, load_private_key

    private, public = generate_keypair(tmp_path / "keys")
    data = create_bundle(ASSET, params, version=1, private_key=private, now=NOW)
    got = verify_bundle(data, artifact_dir=ASSET, trusted_keys=[public], now=NOW + 10**9)
    assert got.version == 1 and got.metadata["expires"] is None
    assert got.key_id == key_id(load_private_key(private))


def test_base_id_is_the_sha256sum_listing(artifact):
    files = sorted(["infer.onnx", "adapt.onnx", "params.safetensors", "weights.bin"])
    assert (ASSET / "weights.bin").is_file()  # the frozen weights are part of the base id
    listing = "".join(f"{sha256_file(ASSET / f)}  {f}\n" for f in files)
    assert base_sha256(artifact) == hashlib.sha256(listing.encode()).hexdigest()


def test_running_statistics_may_be_sent(artifact, key):
    stats = {n: v + 0.5 for n, v in allowed_tensors(artifact).items() if n.endswith("running_var")}
    assert stats
    data = create_bundle(artifact, stats, version=1, private_key=key, now=NOW)
    assert set(verify_bundle(data, artifact_dir=artifact, trusted_keys=[key], now=NOW).params) == set(stats)


# -- signatures and keys ------------------------------------------------------------------------------------
def test_bad_signature(artifact, key, bundle):
    data = bytearray(bundle)
    data[head_size(bundle) + 7] ^= 0x01
    assert rejected(bytes(data), artifact, key).code == "bad_signature"


def test_missing_signature_zeroed(artifact, key, bundle):
    at = head_size(bundle)
    data = bundle[:at] + bytes(64) + bundle[at + 64 :]
    assert rejected(data, artifact, key).code == "bad_signature"


def test_missing_signature_removed(artifact, key, bundle):
    at = head_size(bundle)
    assert rejected(bundle[:at] + bundle[at + 64 :], artifact, key).code == "bad_signature"


def test_unknown_key(artifact, params, key):
    stranger = Ed25519PrivateKey.generate()
    data = create_bundle(artifact, params, version=5, private_key=stranger, now=NOW)
    err = rejected(data, artifact, key)
    assert err.code == "unknown_key" and key_id(stranger) in str(err)


def test_key_id_swapped_to_a_trusted_key_is_a_bad_signature(artifact, params, key):
    stranger = Ed25519PrivateKey.generate()
    payload = st_save(params)
    data = signed(stranger, payload, artifact, key_id=key_id(key))
    assert rejected(data, artifact, key).code == "bad_signature"


def test_metadata_tampered_after_signing(artifact, key, bundle):
    meta = metadata_of(bundle)
    for field, value in (("version", 999), ("expires", NOW + 10**8), ("base_sha256", "0" * 64)):
        forged = canonical_json({**meta, field: value})
        data = bundle[:10] + struct.pack("<I", len(forged)) + forged + bundle[head_size(bundle) :]
        assert rejected(data, artifact, key).code == "bad_signature", field


def test_key_rotation(artifact, params, key):
    new = Ed25519PrivateKey.generate()
    old_bundle = create_bundle(artifact, params, version=5, private_key=key, now=NOW)
    new_bundle = create_bundle(artifact, params, version=6, private_key=new, now=NOW)
    both = [key.public_key(), new.public_key()]
    assert verify_bundle(old_bundle, artifact_dir=artifact, trusted_keys=both, now=NOW).key_id == key_id(key)
    assert verify_bundle(new_bundle, artifact_dir=artifact, trusted_keys=both, now=NOW).key_id == key_id(new)
    with pytest.raises(BundleRejected) as info:  # the old key retired
        verify_bundle(old_bundle, artifact_dir=artifact, trusted_keys=[new.public_key()], now=NOW)
    assert info.value.code == "unknown_key"
    assert verify_bundle(new_bundle, artifact_dir=artifact, trusted_keys=[new.public_key()], now=NOW).version == 6


def test_no_trusted_key_is_a_config_error(artifact, bundle):
    with pytest.raises(ConfigError, match="trusted public key"):
        verify_bundle(bundle, artifact_dir=artifact, trusted_keys=[], now=NOW)


# -- payload integrity ------------------------------------------------------------------------------------
def test_payload_hash_mismatch(artifact, key, bundle):
    data = bytearray(bundle)
    data[-3] ^= 0x40  # inside the tensor data: same size, different bytes
    assert rejected(bytes(data), artifact, key).code == "payload_hash"


def test_payload_size_mismatch(artifact, key, bundle):
    assert rejected(bundle + b"\x00" * 16, artifact, key).code == "payload_size"


def test_truncated_body(artifact, key, bundle):
    assert rejected(bundle[:-10], artifact, key).code == "truncated"


def test_truncated_header_metadata_and_signature(artifact, key, bundle):
    for cut in (0, 9, 13, 40, head_size(bundle) + 30):
        assert rejected(bundle[:cut], artifact, key).code == "truncated", cut


def test_oversized_body(artifact, key, bundle):
    err = rejected(bundle, artifact, key, max_bytes=len(bundle) - 1)
    assert err.code == "oversized" and str(len(bundle)) in str(err)


def test_oversized_declared_payload(artifact, params, key):
    payload = st_save(params)
    data = signed(key, payload, artifact, payload_size=64 * 1024 * 1024)
    assert rejected(data, artifact, key, max_bytes=8 * 1024 * 1024).code == "oversized"


def test_oversized_file_is_refused_before_reading(tmp_path, bundle):
    path = tmp_path / "big.bundle"
    path.write_bytes(bundle)
    assert read_bundle_file(path) == bundle
    with open(path, "ab") as handle:
        handle.truncate(10**9)  # sparse: a "1 GB" bundle that is never read
    with pytest.raises(BundleRejected) as info:
        read_bundle_file(path, max_bytes=1 << 20)
    assert info.value.code == "oversized" and "is 1000000000 bytes" in str(info.value)  # from its size


# -- freshness and the base -----------------------------------------------------------------------------
def test_rollback_to_older_version(artifact, key, bundle):
    err = rejected(bundle, artifact, key, applied_version=7)
    assert err.code == "stale_version" and "7" in str(err)


def test_replay_of_applied_version(artifact, key, bundle):
    assert rejected(bundle, artifact, key, applied_version=5).code == "stale_version"


def test_expired_bundle_freeze(artifact, key, bundle):
    verify_bundle(bundle, artifact_dir=artifact, trusted_keys=[key], now=NOW + 3599)
    assert rejected(bundle, artifact, key, now=NOW + 3600).code == "expired"


def test_bundle_for_another_base_artifact(tmp_path, artifact, params, key, bundle):
    other = tmp_path / "other"
    shutil.copytree(ASSET, other)
    with open(other / "infer.onnx", "ab") as handle:
        handle.write(b"\x00")  # another build of the same model: same tensor names and shapes
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["graphs"]["infer"]["sha256"] = sha256_file(other / "infer.onnx")
    (other / "manifest.json").write_text(json.dumps(manifest))
    foreign = create_bundle(other, params, version=5, private_key=key, now=NOW)
    assert rejected(foreign, artifact, key).code == "wrong_base"
    assert rejected(bundle, other, key).code == "wrong_base"  # and the other way round


# -- tensors: refused at creation and, from a signed but wrong bundle, at verification ----------------------
def tensor_cases(artifact, params):
    name = "bn1.weight"
    return {
        "bad_tensor_name": {**params, "fc.weight": np.ones(10, np.float32)},
        "bad_shape": {**params, name: np.ones(17, np.float32)},
        "bad_dtype": {**params, name: params[name].astype(np.float64)},
        "non_finite": {**params, name: np.where(np.arange(16) == 3, np.nan, params[name]).astype(np.float32)},
    }


@pytest.mark.parametrize("code", ["bad_tensor_name", "bad_shape", "bad_dtype", "non_finite"])
def test_wrong_tensor_refused_at_creation(artifact, params, key, code):
    with pytest.raises(BundleRejected) as info:
        create_bundle(artifact, tensor_cases(artifact, params)[code], version=1, private_key=key, now=NOW)
    assert info.value.code == code


@pytest.mark.parametrize("code", ["bad_tensor_name", "bad_shape", "bad_dtype", "non_finite"])
def test_wrong_tensor_refused_at_verification(artifact, params, key, code):
    data = signed(key, st_save(tensor_cases(artifact, params)[code]), artifact)
    assert rejected(data, artifact, key).code == code


def test_running_statistic_names_that_are_not_parameters(artifact, params, key):
    data = signed(key, st_save({**params, "bn1.num_batches_tracked": np.zeros(1, np.float32)}), artifact)
    assert rejected(data, artifact, key).code == "bad_tensor_name"


def test_infinite_value_refused(artifact, params, key):
    bad = {**params, "layer3.0.bn2.bias": np.full(64, np.inf, np.float32)}
    assert rejected(signed(key, st_save(bad), artifact), artifact, key).code == "non_finite"


def test_negative_running_variance_refused(artifact, key):
    var = -np.ones(16, np.float32)
    assert rejected(signed(key, st_save({"bn1.running_var": var}), artifact), artifact, key).code == "bad_value"


def test_payload_that_is_not_safetensors(artifact, key):
    for payload in (b"\x00" * 64, struct.pack("<Q", 2) + b"[]"):
        assert rejected(signed(key, payload, artifact), artifact, key).code == "malformed"
    err = rejected(signed(key, struct.pack("<Q", 2**40) + b"{}" * 8, artifact), artifact, key)
    assert err.code == "malformed" and "claims 1099511627776 bytes" in str(err)  # bounded before parsing


def test_pickle_payload_is_never_unpickled(artifact, key):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    payload = pickle.dumps(Boom())
    assert rejected(signed(key, payload, artifact), artifact, key).code == "malformed"


# -- malformed metadata and framing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {"version": "5"},
        {"version": 0},
        {"version": True},
        {"version": 2**60},
        {"payload_size": -1},
        {"base_sha256": "ABC"},
        {"created": "yesterday"},
        {"expires": NOW - 1},
        {"created": "<inf>"},
        {"key_id": "<drop>"},
        {"created": "<drop>"},
        {"extra": 1},
    ],
    ids=lambda o: next(iter(o)) + "=" + str(next(iter(o.values()))),
)
def test_malformed_metadata_fields(artifact, params, key, overrides):
    data = signed(key, st_save(params), artifact, **overrides)
    err = rejected(data, artifact, key)
    assert err.code == ("unknown_key" if overrides.get("key_id") == "<drop>" else "malformed")


def sign_raw(key, meta: bytes, payload: bytes) -> bytes:
    return sign_frame(meta, payload, key)


def test_malformed_metadata_encodings(artifact, params, key):
    payload = st_save(params)
    good = metadata_of(signed(key, payload, artifact))
    kid = key_id(key)
    cases = {
        "not json": b"{not json",
        "not an object": b"[1,2]",
        "spaces": json.dumps(good, sort_keys=True).encode(),
        "unsorted": json.dumps(dict(reversed(list(good.items()))), separators=(",", ":")).encode(),
        "duplicate key": canonical_json(good)[:-1] + b',"version":6}',
        "nan": canonical_json(good).replace(b'"created":' + json.dumps(NOW).encode(), b'"created":NaN'),
        "deep nesting": b'{"key_id":"' + kid.encode() + b'","x":' + b"[" * 50000 + b"]" * 50000 + b"}",
        "latin-1": canonical_json(good)[:-1] + b',"\xe9":1}',
    }
    for what, meta in cases.items():
        err = rejected(sign_raw(key, meta[:65536], payload), artifact, key)
        assert err.code == "malformed", what
        assert what != "duplicate key" or "duplicate" in str(err)


def test_bad_magic_and_format_version(artifact, key, bundle):
    assert rejected(b"PK\x03\x04" + bundle[4:], artifact, key).code == "malformed"
    assert rejected(bundle[:8] + struct.pack("<H", 2) + bundle[10:], artifact, key).code == "unsupported_format"


def test_metadata_length_out_of_bounds(artifact, key, bundle):
    for size in (0, 65537, 2**32 - 1):
        data = bundle[:10] + struct.pack("<I", size) + bundle[14:]
        assert rejected(data, artifact, key).code == "malformed", size


def test_signed_unsupported_metadata_format(artifact, params, key):
    data = signed(key, st_save(params), artifact, format_version=2)
    assert rejected(data, artifact, key).code == "unsupported_format"


# -- creation arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [0, -1, 1.5, True, 2**53])
def test_create_refuses_bad_version(artifact, params, key, version):
    with pytest.raises(ConfigError, match="version"):
        create_bundle(artifact, params, version=version, private_key=key)


@pytest.mark.parametrize("expires_in", [0, -5, float("inf"), float("nan")])
def test_create_refuses_bad_expiry(artifact, params, key, expires_in):
    with pytest.raises(ConfigError, match="expires_in"):
        create_bundle(artifact, params, version=1, private_key=key, expires_in=expires_in)


# -- key files -------------------------------------------------------------------------------------------
def test_keypair_files_modes_and_ids(tmp_path):
    from edgetta.sync.keys import generate_keypair, load_private_key, load_public_key

    private, public = generate_keypair(tmp_path / "k")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    kid = key_id(load_public_key(public))
    assert kid == key_id(load_private_key(private)) and len(kid) == 16 and int(kid, 16) >= 0


def test_keys_are_never_overwritten(tmp_path):
    from edgetta.errors import SigningKeyError
    from edgetta.sync.keys import generate_keypair

    private, _ = generate_keypair(tmp_path)
    before = private.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keypair(tmp_path)
    assert private.read_bytes() == before


def test_key_files_of_the_wrong_kind(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgetta.errors import SigningKeyError
    from edgetta.sync.keys import load_private_key, load_public_key

    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(SigningKeyError, match="Ed25519"):
        load_public_key(tmp_path / "ec.pem")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_public_key(tmp_path / "missing.pem")
