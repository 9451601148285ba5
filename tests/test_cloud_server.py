"""edgetta cloud serve's HTTP API on a real uvicorn (127.0.0.1, a free port) with a real httpx client.

The learner behind it here is a small recording stand-in (the CEMA learner has its own tests); everything
else (auth, limits, validation, the queue, versioned bundles on disk) is the production code.
"""

from __future__ import annotations

import functools
import gzip
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save

pytest.importorskip("fastapi")

from edgetta.cloud.auth import RateLimiter, Tokens  # noqa: E402
from edgetta.cloud.server import Service, create_app, uvicorn_server  # noqa: E402
from edgetta.cloud.store import BundleStore  # noqa: E402
from edgetta.cloud.uploads import UploadError, UploadSpec, gunzip_limited  # noqa: E402
from edgetta.cloud.worker import LearnerWorker  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.sync.bundle import base_sha256, create_bundle, verify_bundle  # noqa: E402

ARTIFACT_DIR = str(Path(__file__).resolve().parents[1] / "edgetta" / "assets" / "fmnist_resnet_bn")
ARTIFACT = load_artifact(ARTIFACT_DIR)
BASE = base_sha256(ARTIFACT)
SIGNING_KEY = Ed25519PrivateKey.generate()
SHAPE = (1, 28, 28)
MAX_BYTES = 256 * 1024
ADMIN = "admin-token-0123456789"
DEVICES = {f"cam-{i:02d}": f"device-token-{i:02d}-abcdefgh" for i in range(40)}


class RecordingLearner:
    """Learns nothing: keeps what arrived; a "step" per 8 samples; params move with the samples seen."""

    def __init__(self) -> None:
        self.received: list[np.ndarray] = []
        self.pending = 0
        self.steps = 0
        self.block = threading.Event()
        self.block.set()
        self.poisoned = False

    def add(self, x: np.ndarray) -> None:
        self.block.wait(10)
        self.received.append(x)
        self.pending += len(x)

    def step(self) -> bool:
        if self.pending < 8:
            return False
        self.pending -= 8
        self.steps += 1
        return True

    def replay_step(self) -> bool:
        return False

    def params(self) -> dict[str, np.ndarray]:
        n = sum(len(x) for x in self.received)
        weight = np.full(16, np.nan if self.poisoned else 1.0 + n, np.float32)
        return {"bn1.weight": weight, "bn1.bias": np.zeros(16, np.float32)}


def _signer(params, version: int) -> bytes:
    return create_bundle(ARTIFACT, params, version=version, private_key=SIGNING_KEY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, tmp: Path, publish_every: int = 0, max_queue: int = 64, tls: tuple[str, str] | None = None):
        self.learner = RecordingLearner()
        self.store = BundleStore(tmp / "state", _signer)
        self.worker = LearnerWorker(self.learner, self.store, publish_every=publish_every, max_queue=max_queue)
        tokens = Tokens.from_mapping({"devices": DEVICES, "admin": ADMIN})
        spec = UploadSpec(sample_shape=SHAPE, base_sha256=BASE, max_samples=64, max_bytes=MAX_BYTES)
        self.service = Service(spec, tokens, self.store, self.worker, RateLimiter(rate=0.5, burst=20))
        self.port = _free_port()
        self.server = uvicorn_server(create_app(self.service), "127.0.0.1", self.port, *(tls or (None, None)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> Running:
        self.worker.start()
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.worker.stop()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[Running]:
    with Running(tmp_path_factory.mktemp("cloud")) as running:
        yield running


_next_device = iter(DEVICES)


@pytest.fixture
def device() -> tuple[str, dict[str, str]]:
    """A device of its own for each test (rate-limit buckets are per device)."""
    name = next(_next_device)
    return name, {"Authorization": f"Bearer {DEVICES[name]}"}


def upload(n: int = 4, shape=SHAPE, dtype=np.float32, device: str = "cam-00", base: str = BASE, seq: int = 0, **extra):
    tensors = {"x": np.random.default_rng(seq).standard_normal((n, *shape)).astype(dtype)}
    tensors.update(extra)
    meta = {"device_id": device, "base_sha256": base, "batch_seq": str(seq)}
    return save(tensors, metadata=meta)


def test_upload_accepted_reaches_learner(cloud, device):
    name, auth = device
    before = cloud.worker.samples
    r = httpx.post(f"{cloud.url}/v1/samples", content=upload(5, device=name, seq=1), headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5}
    body = gzip.compress(upload(3, device=name, seq=2, entropy=np.ones(3, np.float32)))
    r = httpx.post(f"{cloud.url}/v1/samples", content=body, headers={**auth, "Content-Encoding": "gzip"})
    assert r.json() == {"accepted": 3}
    assert cloud.worker.wait_idle(10)
    assert cloud.worker.samples == before + 8
    # a retried upload (same batch_seq) is acknowledged once, not learned twice
    r = httpx.post(f"{cloud.url}/v1/samples", content=upload(5, device=name, seq=1), headers=auth)
    assert r.json() == {"accepted": 5, "duplicate": True}
    assert cloud.worker.wait_idle(10) and cloud.worker.samples == before + 8


@pytest.mark.parametrize("token", [None, "Bearer wrong-token-000000000", "Basic " + DEVICES["cam-00"], ADMIN])
def test_upload_needs_device_token(cloud, token):
    headers = {"Authorization": token} if token else {}
    r = httpx.post(f"{cloud.url}/v1/samples", content=upload(2), headers=headers)
    assert r.status_code == 401
    assert "token" in r.json()["error"]
    for path in ("/v1/bundles/latest", "/v1/bundles/1"):
        if token != ADMIN:
            assert httpx.get(f"{cloud.url}{path}", headers=headers).status_code == 401


def test_oversize_body_refused(cloud, device):
    name, auth = device
    big = b"\0" * (MAX_BYTES + 1)
    r = httpx.post(f"{cloud.url}/v1/samples", content=big, headers=auth)
    assert r.status_code == 413
    # chunked (no Content-Length): refused while streaming
    r = httpx.post(f"{cloud.url}/v1/samples", content=iter([b"\0" * 65536] * 8), headers=auth)
    assert r.status_code == 413
    # too many samples is a count problem, not a size one
    r = httpx.post(f"{cloud.url}/v1/samples", content=upload(65, device=name), headers=auth)
    assert r.status_code in (413, 422)


@functools.cache
def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (32 * 1024 * 1024), compresslevel=9)


def test_gzip_bomb_never_expands_in_memory():
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(UploadError) as err:
            gunzip_limited(bomb, 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.status == 413
    assert peak < 4 * 1024 * 1024  # the 32 MiB payload was never decoded in full


def test_gzip_bomb_refused(cloud, device):
    name, auth = device
    bomb = gzip_bomb()
    assert len(bomb) < MAX_BYTES
    r = httpx.post(f"{cloud.url}/v1/samples", content=bomb, headers={**auth, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "decoded" in r.json()["error"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"shape": (1, 28, 27)}, "shape"),
        ({"shape": (3, 28, 28)}, "shape"),
        ({"dtype": np.float64}, "dtype"),
        ({"dtype": np.float16}, "dtype"),
        ({"n": 65}, "samples"),
        ({"base": "cd" * 32}, "base"),
        ({"device": "cam-39"}, "device_id"),
        ({"entropy": np.ones(3, np.float32)}, "entropy"),
        ({"y": np.zeros(4, np.int64)}, "unexpected"),
    ],
)
def test_invalid_upload_is_422(cloud, device, kwargs, words):
    name, auth = device
    before = cloud.worker.samples
    kwargs.setdefault("device", name)
    r = httpx.post(f"{cloud.url}/v1/samples", content=upload(**kwargs), headers=auth)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]
    assert cloud.worker.wait_idle(5) and cloud.worker.samples == before


def test_malformed_bodies_are_422(cloud, device):
    name, auth = device
    x = np.zeros((2, *SHAPE), np.float32)
    x[0, 0, 0, 0] = np.nan
    nan = save({"x": x}, metadata={"device_id": name, "base_sha256": BASE, "batch_seq": "0"})
    no_meta = save({"x": np.zeros((2, *SHAPE), np.float32)})
    for body, words in [(b"not safetensors", "header"), (nan, "NaN"), (no_meta, "metadata"), (upload()[:-10], "")]:
        r = httpx.post(f"{cloud.url}/v1/samples", content=body, headers=auth)
        assert r.status_code == 422, (words, r.text)
        assert words in r.json()["error"]
    r = httpx.post(f"{cloud.url}/v1/samples", content=b"\x1f\x8b junk", headers={**auth, "Content-Encoding": "gzip"})
    assert r.status_code == 422


def test_rate_limit_per_device(cloud, device):
    name, auth = device
    codes = [
        httpx.post(f"{cloud.url}/v1/samples", content=upload(1, device=name, seq=i), headers=auth).status_code
        for i in range(25)
    ]
    assert codes[:20] == [200] * 20  # the burst
    limited = httpx.post(f"{cloud.url}/v1/samples", content=upload(1, device=name, seq=99), headers=auth)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    other = next(_next_device)  # another device is not affected
    r = httpx.post(
        f"{cloud.url}/v1/samples",
        content=upload(1, device=other, seq=0),
        headers={"Authorization": f"Bearer {DEVICES[other]}"},
    )
    assert r.status_code == 200


def test_full_learner_queue_answers_429_without_waiting(tmp_path):
    with Running(tmp_path, max_queue=1) as running:
        running.learner.block.clear()  # the learner is stuck in a long step
        auth = {"Authorization": f"Bearer {DEVICES['cam-00']}"}
        codes = []
        start = time.monotonic()
        for seq in range(4):
            codes.append(httpx.post(f"{running.url}/v1/samples", content=upload(2, seq=seq), headers=auth).status_code)
        assert time.monotonic() - start < 5  # no request waited for training
        assert 429 in codes and codes[0] == 200
        running.learner.block.set()


def test_healthz_publish_latest_download(cloud):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.get(f"{cloud.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    before = r.json()["latest_version"]
    device_auth = {"Authorization": f"Bearer {DEVICES['cam-00']}"}
    assert httpx.post(f"{cloud.url}/v1/publish", headers=device_auth).status_code == 403
    assert httpx.post(f"{cloud.url}/v1/publish").status_code == 401
    published = httpx.post(f"{cloud.url}/v1/publish", headers=admin)
    assert published.status_code == 200
    info = published.json()
    assert info["version"] == (before or 0) + 1
    assert httpx.get(f"{cloud.url}/healthz").json()["latest_version"] == info["version"]
    latest = httpx.get(f"{cloud.url}/v1/bundles/latest", headers=device_auth).json()
    assert latest == info and latest["url"] == f"/v1/bundles/{info['version']}"
    data = httpx.get(f"{cloud.url}{latest['url']}", headers=device_auth).content
    assert len(data) == info["size"]
    import hashlib

    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    verified = verify_bundle(data, artifact_dir=ARTIFACT, trusted_keys=[SIGNING_KEY.public_key()])
    assert verified.version == info["version"]
    np.testing.assert_array_equal(verified.params["bn1.weight"], cloud.learner.params()["bn1.weight"])
    # a device that applied this version refuses the same bundle again (replay)
    from edgetta.sync.bundle import BundleRejected

    with pytest.raises(BundleRejected):
        verify_bundle(
            data, artifact_dir=ARTIFACT, trusted_keys=[SIGNING_KEY.public_key()], applied_version=info["version"]
        )
    assert httpx.get(f"{cloud.url}/v1/bundles/{info['version'] + 5}", headers=device_auth).status_code == 404


def test_no_bundle_yet_is_204_and_versions_survive_restart(tmp_path):
    auth = {"Authorization": f"Bearer {DEVICES['cam-00']}"}
    with Running(tmp_path) as running:
        assert httpx.get(f"{running.url}/v1/bundles/latest", headers=auth).status_code == 204
        assert httpx.get(f"{running.url}/healthz").json()["latest_version"] is None
        for _ in range(2):
            httpx.post(f"{running.url}/v1/publish", headers={"Authorization": f"Bearer {ADMIN}"})
    with Running(tmp_path) as running:  # same state dir: numbering continues
        assert httpx.get(f"{running.url}/v1/bundles/latest", headers=auth).json()["version"] == 2
        r = httpx.post(f"{running.url}/v1/publish", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.json()["version"] == 3
        assert running.store.last_params() is not None


def test_publishes_every_k_steps(tmp_path):
    with Running(tmp_path, publish_every=2) as running:
        auth = {"Authorization": f"Bearer {DEVICES['cam-00']}"}
        for seq in range(4):  # 4 x 8 samples = 4 steps -> 2 bundles
            r = httpx.post(f"{running.url}/v1/samples", content=upload(8, seq=seq), headers=auth)
            assert r.status_code == 200
        assert running.worker.wait_idle(10)
        assert running.learner.steps == 4
        assert running.store.latest is not None and running.store.latest.version == 2


def _self_signed(tmp: Path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(certfile), str(keyfile)


def test_tls(tmp_path):
    import ssl

    certfile, keyfile = _self_signed(tmp_path)
    with Running(tmp_path, tls=(certfile, keyfile)) as running:
        assert running.url.startswith("https://")
        trust = ssl.create_default_context(cafile=certfile)
        auth = {"Authorization": f"Bearer {DEVICES['cam-00']}"}
        r = httpx.post(f"{running.url}/v1/samples", content=upload(2), headers=auth, verify=trust)
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(f"{running.url}/healthz", verify=ssl.create_default_context())
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{running.port}/healthz")


def test_serve_options_fail_with_the_option_named(tmp_path, capsys):
    from edgetta.cli import main

    keys = tmp_path / "key.pem"
    keys.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    good_tokens = tmp_path / "tokens.yaml"
    good_tokens.write_text("devices:\n  cam-01: a-token-of-enough-length\nadmin: another-token-long-enough\n")
    short = tmp_path / "short.yaml"
    short.write_text("devices: {cam-01: short}\n")
    shared = tmp_path / "shared.json"
    shared.write_text('{"devices": {"a": "same-token-0123456789", "b": "same-token-0123456789"}}')
    base = ["cloud", "serve", "--artifact", ARTIFACT_DIR, "--student", "x:y", "--teacher", "x:y"]
    base += ["--state", str(tmp_path / "state")]
    cases = [
        (["--key", str(tmp_path / "missing.pem"), "--tokens", str(good_tokens)], "--key"),
        (["--key", str(keys), "--tokens", str(short)], "at least 16"),
        (["--key", str(keys), "--tokens", str(shared)], "used twice"),
        (["--key", str(keys), "--tokens", str(good_tokens), "--certfile", str(keys)], "--keyfile"),
        (["--key", str(good_tokens), "--tokens", str(good_tokens)], "--key: private key"),
    ]
    missing = [a if a != ARTIFACT_DIR else str(tmp_path / "nothing") for a in base]
    assert main([*missing, "--key", str(keys), "--tokens", str(good_tokens)]) == 2
    assert "--artifact: artifact directory" in capsys.readouterr().err
    for extra, words in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert "edgetta cloud: error:" in err and words in err, (extra, err)
        assert "Traceback" not in err


def test_diverged_learner_publishes_nothing(tmp_path):
    with Running(tmp_path) as running:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.post(f"{running.url}/v1/publish", headers=admin).json()["version"] == 1
        running.learner.poisoned = True  # NaN parameters: create_bundle refuses them
        r = httpx.post(f"{running.url}/v1/publish", headers=admin)
        assert r.status_code == 500 and "non-finite" in r.json()["error"]
        assert running.store.latest.version == 1
        assert httpx.get(f"{running.url}/healthz").json()["latest_version"] == 1
