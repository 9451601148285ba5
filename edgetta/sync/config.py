"""The ``sync:`` block of a daemon config: where the cloud is, who this device is, what it uploads and trusts.

    sync:
      server: https://fleet.example.com:8750   # edgetta cloud serve
      device_id: cam0-box
      token_file: secrets/device.token         # or token: "..." (a file keeps it out of the config)
      trust: [keys/fleet-2026.pem]              # public keys whose bundles are applied (rotation: list both)
      stream: cam0                              # whose inputs are uploaded and which adapter gets bundles
      upload: {policy: cema, batch_rows: 64}   # cema | all | random | none; CEMA constants below
      poll: {interval: 30, jitter: 0.2}
      queue: {max_rows: 10000, max_bytes: 67108864, policy: drop_oldest}
      apply: {health_window: 64, min_rows: 16, max_entropy_ratio: 1.2, max_class_fraction: 0.9}

Every problem is a :class:`ConfigError` naming the key (``sync.upload.policy``). Relative paths resolve against
the config file's folder; the token file and the trusted keys are read when the daemon starts
(:meth:`SyncConfig.check_files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgetta.errors import ConfigError
from edgetta.streams.backoff import Backoff
from edgetta.streams.spec import SpecReader
from edgetta.sync.queue import POLICIES as QUEUE_POLICIES
from edgetta.sync.selection import SelectionConfig

UPLOAD_POLICIES = ("cema", "all", "random", "none")
DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@dataclass(frozen=True)
class UploadConfig:
    """Which processed inputs go to the cloud and how they are sent. ``fraction``: for ``random``."""

    policy: str = "cema"
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    fraction: float = 0.3
    seed: int = 0
    batch_rows: int = 64
    batch_bytes: int = 4 * 2**20
    idle_seconds: float = 1.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))


@dataclass(frozen=True)
class PollConfig:
    interval: float = 30.0
    jitter: float = 0.2


@dataclass(frozen=True)
class UploadQueueConfig:
    max_rows: int = 10_000
    max_bytes: int = 64 * 2**20
    policy: str = "drop_oldest"


@dataclass(frozen=True)
class ApplyConfig:
    """The health check of a new bundle on the last ``health_window`` inputs (``edgetta.sync.slots.HealthPolicy``:
    at least ``min_rows`` inputs; mean entropy at most ``max_entropy_ratio`` x current + ``entropy_slack`` ln C;
    at most ``max_class_fraction`` of the window in one class when the current parameters stay under it)."""

    health_window: int = 64
    min_rows: int = 16
    max_entropy_ratio: float = 1.2
    entropy_slack: float = 0.02
    max_class_fraction: float = 0.9


@dataclass(frozen=True)
class SyncConfig:
    server: str
    device_id: str
    token: str | None = field(repr=False)  # given inline, or None with token_file
    trust: tuple[Path, ...]
    stream: str | None = None
    upload: UploadConfig = field(default_factory=UploadConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    queue: UploadQueueConfig = field(default_factory=UploadQueueConfig)
    apply: ApplyConfig = field(default_factory=ApplyConfig)
    timeout: float = 10.0
    ca_file: Path | None = None
    max_bundle_bytes: int = 16 * 2**20
    token_file: Path | None = None

    def read_token(self) -> str:
        """The bearer token: as given, or read from ``token_file`` (at start, so the file may come later)."""
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        where = "sync.token_file"
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read {self.token_file} ({exc.strerror or exc}); give the file with the token"
            ) from None
        if not token or any(c.isspace() for c in token):
            raise ConfigError(f"{where}: {self.token_file} must hold the token as one word without spaces")
        return token

    def check_files(self) -> None:
        """At daemon start: the token file and the trusted keys exist (ConfigError naming the key)."""
        self.read_token()
        for p in self.trust:
            if not p.is_file():
                raise ConfigError(
                    f"sync.trust: {p} does not exist; give the public key written by edgetta keys generate"
                )


def _path(r: SpecReader, value: Any, name: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise r.error(name, f"must be a path (relative to the config file), got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _token(r: SpecReader, base: Path) -> tuple[str | None, Path | None]:
    given = [k for k in ("token", "token_file") if r.has(k)]
    if len(given) != 1:
        raise ConfigError(
            f"{r.where}: give exactly one of token or token_file (the device's bearer token for the server), got "
            f"{' and '.join(given) or 'neither'}"
        )
    if r.has("token_file"):
        return None, _path(r, r.raw("token_file"), "token_file", base)
    token = r.string("token", meaning="the device's bearer token")
    if any(c.isspace() for c in token):
        raise r.error("token", "must be one word without spaces")
    return token, None


def _backoff(r: SpecReader) -> Backoff:
    sub = r.sub("backoff")
    initial = sub.number("initial", 1.0, above=0.0, meaning="seconds before the first retry")
    maximum = sub.number("max", 60.0, above=0.0, meaning="longest wait in seconds")
    factor = sub.number("factor", 2.0, minimum=1.0)
    jitter = sub.number("jitter", 0.25, minimum=0.0, maximum=1.0, meaning="fraction of the wait")
    sub.finish()
    if maximum < initial:
        raise sub.error("max", f"{maximum:g} s is shorter than initial {initial:g} s")
    return Backoff(initial=initial, maximum=maximum, factor=factor, jitter=jitter)


def _upload(r: SpecReader) -> UploadConfig:
    d = SelectionConfig()
    policy = r.choice("policy", UPLOAD_POLICIES, "cema")
    e_max = r.number("e_max", d.e_max, above=0.0, maximum=1.0, meaning="fraction of ln C")
    e_min = r.number("e_min", d.e_min, minimum=0.0, maximum=1.0, meaning="fraction of ln C")
    if e_min >= e_max:
        raise r.error("e_min", f"{e_min:g} must be below e_max {e_max:g}")
    eps = r.number("eps", None, above=0.0, maximum=1.0, meaning="EATA redundancy bound; null: off")
    selection = SelectionConfig(
        e_max=e_max,
        lam=r.number("lambda", d.lam, above=0.0),
        e_min=e_min,
        warmup=r.number("warmup", d.warmup, minimum=1, integer=True, meaning="samples"),
        eps=eps,
    )
    out = UploadConfig(
        policy=str(policy),
        selection=selection,
        fraction=r.number("fraction", 0.3, above=0.0, maximum=1.0, meaning="share of inputs for policy random"),
        seed=r.number("seed", 0, minimum=0, integer=True),
        batch_rows=r.number("batch_rows", 64, minimum=1, integer=True),
        batch_bytes=r.number("batch_bytes", 4 * 2**20, minimum=1024, integer=True),
        idle_seconds=r.number("idle_seconds", 1.0, above=0.0),
        backoff=_backoff(r),
    )
    r.finish()
    return out


def build_sync_config(data: Any, base: Path, stream_names: list[str]) -> SyncConfig | None:
    """The validated ``sync`` block (None when absent or null)."""
    if data is None:
        return None
    import re

    r = SpecReader(data, "sync")
    server = r.string("server", meaning="the sync server's URL, e.g. http://127.0.0.1:8750")
    parsed = urlparse(server)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise r.error("server", f"must be an http:// or https:// URL, got {server!r}")
    device_id = r.string("device_id", meaning="this device's name at the server")
    if not re.match(DEVICE_PATTERN, device_id):
        raise r.error("device_id", f"must be 1-64 letters, digits, '_', '.' or '-', got {device_id!r}")
    token, token_file = _token(r, base)
    trust_value = r.required("trust", "public key file(s) whose bundles are applied, e.g. [keys/public.pem]")
    trust_list = [trust_value] if isinstance(trust_value, str) else trust_value
    if not isinstance(trust_list, list) or not trust_list:
        raise r.error("trust", f"must be a public key file or a list of them, got {trust_value!r}")
    trust = tuple(_path(r, v, "trust", base) for v in trust_list)
    stream = r.string("stream", None, meaning="the name of one of the streams")
    if stream is None:
        if len(stream_names) != 1:
            raise r.error("stream", f"missing; with several streams say which one syncs: {', '.join(stream_names)}")
        stream = stream_names[0]
    elif stream not in stream_names:
        raise r.error("stream", f"{stream!r} is not a stream of this config ({', '.join(stream_names)})")
    upload = _upload(r.sub("upload"))

    pr = r.sub("poll")
    poll = PollConfig(
        interval=pr.number("interval", 30.0, above=0.0, meaning="seconds between polls"),
        jitter=pr.number("jitter", 0.2, minimum=0.0, maximum=0.9, meaning="fraction of the interval"),
    )
    pr.finish()

    qr = r.sub("queue")
    queue = UploadQueueConfig(
        max_rows=qr.number("max_rows", 10_000, minimum=1, integer=True),
        max_bytes=qr.number("max_bytes", 64 * 2**20, minimum=1024, integer=True),
        policy=str(qr.choice("policy", QUEUE_POLICIES, "drop_oldest")),
    )
    qr.finish()

    ar = r.sub("apply")
    apply = ApplyConfig(
        health_window=ar.number("health_window", 64, minimum=1, integer=True, meaning="recent inputs kept"),
        min_rows=ar.number("min_rows", 16, minimum=1, integer=True, meaning="inputs a check needs"),
        max_entropy_ratio=ar.number("max_entropy_ratio", 1.2, minimum=1.0),
        entropy_slack=ar.number("entropy_slack", 0.02, minimum=0.0, meaning="fraction of ln C"),
        max_class_fraction=ar.number("max_class_fraction", 0.9, above=0.0, maximum=1.0),
    )
    ar.finish()
    if apply.min_rows > apply.health_window:
        raise ar.error("min_rows", f"{apply.min_rows} is more than health_window {apply.health_window} keeps")
    ca = r.raw("ca_file")
    ca_file = None if ca is None else _path(r, ca, "ca_file", base)
    if ca_file is not None and not ca_file.is_file():
        raise r.error("ca_file", f"{ca_file} does not exist; give the CA certificate (PEM) of the server")
    out = SyncConfig(
        server=server,
        device_id=device_id,
        token=token,
        token_file=token_file,
        trust=trust,
        stream=stream,
        upload=upload,
        poll=poll,
        queue=queue,
        apply=apply,
        timeout=r.number("timeout", 10.0, above=0.0, meaning="seconds per HTTP request"),
        ca_file=ca_file,
        max_bundle_bytes=r.number("max_bundle_bytes", 16 * 2**20, minimum=1024, integer=True),
    )
    r.finish()
    return out
