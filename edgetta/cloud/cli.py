"""``edgetta cloud ...`` commands. Imports nothing heavy at module level (torch only inside ``serve``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgetta.errors import ConfigError, EdgettaError

T = TypeVar("T")


def _positive(kind: type, minimum: float) -> object:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum of {minimum}")
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edgetta cloud serve`` to the ``edgetta`` parser."""
    group = sub.add_parser("cloud", help="the cloud side of cloud-edge sync (needs edgetta[cloud,export])")
    commands = group.add_subparsers(dest="cloud_command", required=True)
    p = commands.add_parser(
        "serve",
        help="serve uploads and signed bundles; distil a teacher into the edge model (CEMA)",
        description="Devices upload samples; a CEMA learner adapts the teacher and distils it into the edge "
        "model's norm affine parameters; signed parameter bundles are published every K steps or on demand.",
    )
    p.add_argument("--artifact", required=True, help="the edge model's artifact directory (the bundles' base)")
    p.add_argument("--student", required=True, help="SPEC of the edge model's architecture (file.py:fn or module:fn)")
    p.add_argument("--student-weights", help="full state_dict (safetensors) of the edge model (default: rebuilt "
                   "from the artifact's graph)")  # fmt: skip
    p.add_argument("--teacher", required=True, help="SPEC of the foundation (teacher) model")
    p.add_argument("--teacher-weights", help="state_dict (safetensors) to load into the teacher")
    p.add_argument("--key", required=True, help="Ed25519 private key (PEM) that signs the bundles")
    p.add_argument("--tokens", required=True, help="YAML/JSON file: devices: {id: token}, admin: token")
    p.add_argument("--state", required=True, help="directory for bundles and the version counter (keep it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive(int, 1), default=8750)
    p.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile, serve HTTPS")
    p.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    p.add_argument("--publish-every", type=_positive(int, 0), default=20, metavar="K",
                   help="publish a bundle every K learning steps (0: only on POST /v1/publish)")  # fmt: skip
    p.add_argument("--max-upload-bytes", type=_positive(int, 1024), default=8 * 1024 * 1024, metavar="N",
                   help="largest upload body, on the wire and decoded")  # fmt: skip
    p.add_argument("--max-samples", type=_positive(int, 1), default=256, help="most samples in one upload")
    p.add_argument("--rate", type=_positive(float, 0.001), default=2.0, help="uploads per second per device")
    p.add_argument("--burst", type=_positive(int, 1), default=20, help="uploads a device may send at once")
    p.add_argument("--queue", type=_positive(int, 1), default=64, help="uploads waiting for the learner")
    p.add_argument("--batch-size", type=_positive(int, 1), default=32, help="new uploads per CEMA step")
    p.add_argument("--replay-size", type=_positive(int, 1), default=10_000, help="uploads kept for replay")
    p.add_argument("--student-lr", type=_positive(float, 0), default=2.5e-3)
    p.add_argument("--teacher-lr", type=_positive(float, 0), default=2.5e-4)
    p.add_argument("--bundle-expires-in", type=_positive(float, 1), metavar="SECONDS",
                   help="devices refuse a bundle this long after it was made (default: never)")  # fmt: skip
    p.add_argument("--threads", type=_positive(int, 1), default=1, help="torch CPU threads for the learner")
    p.set_defaults(func=cmd_serve)


def _option(option: str, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, with an error naming ``option`` (``--key: private key ... is not ...``)."""
    try:
        return fn(*args)
    except EdgettaError as exc:
        raise type(exc)(f"{option}: {exc}") from exc


def _check_paths(args: argparse.Namespace) -> None:
    """Cheap checks first, so a typo fails before the models load."""
    for option in ("key", "tokens", "student_weights", "teacher_weights", "certfile", "keyfile"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"--{option.replace('_', '-')} {value}: no such file")
    if (args.certfile is None) != (args.keyfile is None):
        raise ConfigError("TLS needs both --certfile and --keyfile (or neither for plain HTTP)")


def _load_teacher(spec: str, weights: str | None, num_classes: int, sample_shape: tuple[int, ...]) -> object:
    import torch

    from edgetta.export import resolve_spec

    teacher = _option("--teacher", resolve_spec, spec)
    if weights is not None:
        from safetensors.torch import load_file

        try:
            teacher.load_state_dict(load_file(weights))
        except Exception as exc:  # safetensors' own error or torch's key/shape mismatch
            raise ConfigError(f"--teacher-weights {weights} do not fit --teacher {spec}: {exc}") from exc
    teacher.eval()
    with torch.no_grad():
        try:
            out = teacher(torch.zeros(2, *sample_shape))
        except Exception as exc:  # noqa: BLE001 - user model code
            raise ConfigError(f"--teacher {spec} cannot take inputs of shape {list(sample_shape)}: {exc}") from exc
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"--teacher {spec} gives outputs {list(out.shape)[1:]}, the edge model {num_classes} classes")
    return teacher


def cmd_serve(args: argparse.Namespace) -> int:
    """``edgetta cloud serve``."""
    from edgetta.cloud.auth import Tokens
    from edgetta.contract import load_artifact
    from edgetta.sync.bundle import base_sha256, create_bundle
    from edgetta.sync.keys import load_private_key

    _check_paths(args)  # cheap checks first: a typo fails before torch and the models load
    artifact = _option("--artifact", load_artifact, args.artifact)
    tokens = Tokens.load(args.tokens)
    key = _option("--key", load_private_key, args.key)
    try:
        import fastapi  # noqa: F401
        import torch
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"edgetta cloud serve needs {exc.name}: pip install 'edgetta[cloud,export]'", file=sys.stderr)
        return 2
    from edgetta.cloud.auth import RateLimiter
    from edgetta.cloud.learner import CemaConfig, CemaLearner
    from edgetta.cloud.server import Service, create_app, run, uvicorn_server
    from edgetta.cloud.store import BundleStore
    from edgetta.cloud.student import build_student
    from edgetta.cloud.uploads import UploadSpec
    from edgetta.cloud.worker import LearnerWorker
    from edgetta.export import resolve_spec

    torch.set_num_threads(args.threads)
    sample_shape = tuple(int(d) for d in artifact.input_shape[1:])
    student = _option("--student", build_student, _option("--student", resolve_spec, args.student), artifact,
                      args.student_weights)  # fmt: skip
    teacher = _load_teacher(args.teacher, args.teacher_weights, artifact.num_classes, sample_shape)

    def sign(params, version: int) -> bytes:
        return create_bundle(artifact, params, version=version, private_key=key, expires_in=args.bundle_expires_in)

    store = BundleStore(args.state, sign)
    config = CemaConfig(
        batch_size=args.batch_size,
        replay_size=args.replay_size,
        replay_start=min(256, args.replay_size),
        student_lr=args.student_lr,
        teacher_lr=args.teacher_lr,
    )
    learner = CemaLearner(teacher, student, artifact, config, resume=store.last_params())
    worker = LearnerWorker(learner, store, publish_every=args.publish_every, max_queue=args.queue)
    spec = UploadSpec(sample_shape, base_sha256(artifact), args.max_samples, args.max_upload_bytes)
    service = Service(spec, tokens, store, worker, RateLimiter(rate=args.rate, burst=args.burst))
    server = uvicorn_server(create_app(service), args.host, args.port, args.certfile, args.keyfile)
    scheme = "https" if args.certfile else "http"
    latest = store.latest.version if store.latest else None

    def ready() -> None:
        print(f"edgetta cloud: listening on {scheme}://{args.host}:{args.port} (latest bundle {latest})", flush=True)

    worker.start()
    try:
        run(server, on_ready=ready)
    finally:
        worker.stop()
    if not server.started:
        raise ConfigError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this host)")
    return 0
