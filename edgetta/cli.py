"""The ``edgetta`` command line. Each subcommand imports only what it needs, so device-side
commands (inspect, replay, demo) never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgetta import __version__
from edgetta.configs import preset_names
from edgetta.errors import ConfigError, EdgettaError


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be integers like 1,3,32,32") from exc
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive integers, batch first: 1,3,32,32")
    return dims


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def cmd_export(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        print("edgetta export needs PyTorch: pip install 'edgetta[export]'", file=sys.stderr)
        return 2
    from pathlib import Path

    from edgetta.errors import ExportError
    from edgetta.export import check_output_dir, export_model, load_calibration, resolve_spec

    check_output_dir(Path(args.out))  # before any work: a bad --out fails at once
    calib = load_calibration(args.calib) if args.calib else None
    preprocess = {}
    for key in ("mean", "std"):
        text = getattr(args, key)
        if text:
            try:
                preprocess[key] = _floats(text)
            except ValueError as exc:
                raise ExportError(f"--{key} {text!r} must be comma-separated numbers, e.g. 0.5,0.5,0.5") from exc
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    model = resolve_spec(args.spec)
    torch.manual_seed(args.seed)
    example = torch.randn(*args.input_shape)
    manifest = export_model(
        model,
        example,
        args.out,
        trainable=args.trainable,
        frozen=args.frozen,
        class_names=class_names,
        classifier=args.classifier,
        opset=args.opset,
        calib=calib,
        verify=args.verify,
        preprocess=preprocess,
        progress=args.progress,
    )
    from edgetta.runtime.inspect import describe

    print(describe(args.out, manifest))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgetta.runtime.inspect import describe, integrity_problems, trt_lint_artifact

    print(describe(args.artifact))
    status = 0
    problems = integrity_problems(args.artifact)
    if problems:
        print("\nINTEGRITY CHECK FAILED:")
        for p in problems:
            print(f"  - {p}")
        status = 1
    else:
        print("\nintegrity: all file hashes match the manifest")
    if args.trt_lint:
        ok, text = trt_lint_artifact(args.artifact)
        print("\n" + text)
        status = status or (0 if ok else 1)
    return status


def _method_choice(name: str | None) -> dict[str, str]:
    """``--method NAME``: a bundled preset when one has that name, else the method with its own defaults."""
    from edgetta.runtime.config import preset_names

    if not name:
        return {}
    return {"preset": name} if name in preset_names() else {"method": name}


def cmd_replay(args: argparse.Namespace) -> int:
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config, valid_names
    from edgetta.streams import NpzSource, prepare_output_dir, replay, skip_lines, summary_line

    if not args.method and not args.config:
        raise ConfigError(f"choose what to run with --method NAME or --config FILE.yaml ({valid_names()})")
    config = load_config(
        args.config,
        batch_size=args.batch_size,
        episodic=True if args.episodic else None,
        **_method_choice(args.method),
    )
    out = prepare_output_dir(args.out)
    source = NpzSource(args.data)
    adapter = Adapter(args.artifact, config)
    summary = replay(adapter, source, out, episodic=config.episodic, probabilities=args.probabilities)
    print(f"{summary_line(summary)} -> {out}")
    if summary.skipped:
        print("skipped inputs, most common reasons first:")
        print("\n".join(skip_lines(summary)))
    if summary.processed == 0:
        why = "the stream holds no inputs ('x' has 0 rows)" if summary.samples == 0 else "every input was skipped"
        reasons = "; ".join(summary.skip_reasons)
        print(
            f"edgetta replay: error: no input could be processed: {why}" + (f" ({reasons})" if reasons else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgetta.demo import run_demo

    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    run_demo(args.out, recipes=recipes, batch_size=args.batch_size, limit_per_phase=args.limit_per_phase)
    return 0


def cmd_build_trt(args: argparse.Namespace) -> int:
    from edgetta.export.tensorrt import build_engines

    for which, path in build_engines(args.artifact, max_batch=args.max_batch, fp16=args.fp16).items():
        print(f"{which}: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgetta.daemon import run_daemon

    if args.max_items is not None and args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1, got {args.max_items}")
    resume = True if args.resume else False if args.fresh else None
    return run_daemon(args.config, resume=resume, max_items=args.max_items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetta", description="Test-time adaptation runtime for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgetta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a torch model to an artifact (needs edgetta[export])")
    p.add_argument("spec", help="path/to/file.py:function or package.module:function returning an nn.Module")
    p.add_argument("--input-shape", type=_shape, required=True, help="example input shape, batch first: 1,3,32,32")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument(
        "--trainable",
        action="append",
        metavar="GLOB",
        help="train only norm layers whose module name matches (repeatable; default: all)",
    )
    p.add_argument("--frozen", action="append", metavar="GLOB", help="freeze norm layers matching GLOB (repeatable)")
    p.add_argument("--class-names", help="comma-separated class names")
    p.add_argument("--classifier", help="module name of the final classifier (default: detected)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--calib", help="NPZ with array 'x' of in-distribution inputs for the EATA Fisher diagonal")
    p.add_argument("--mean", help="preprocessing mean recorded in the manifest, comma-separated")
    p.add_argument("--std", help="preprocessing std recorded in the manifest, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example input")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check both graphs against a float64 torch reference (default: on)",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="print each export stage with its time on stderr (default: only when stderr is a terminal)",
    )
    shown.add_argument("--quiet", dest="progress", action="store_false", default=None, help="print no stage messages")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="describe an artifact and verify its file hashes")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--trt-lint", action="store_true", help="check both graphs for TensorRT compatibility")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("build-trt", help="build TensorRT engines from an artifact (on the target device)")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--fp16", action="store_true")
    p.set_defaults(func=cmd_build_trt)

    p = sub.add_parser("replay", help="run a recorded stream (NPZ) through an adaptation method")
    p.add_argument("--artifact", required=True, help="artifact directory")
    p.add_argument("--data", required=True, help="NPZ with x (model-ready inputs) and optional y, domain")
    p.add_argument(
        "--method",
        help=f"a bundled preset ({', '.join(preset_names())}) or a method with its own defaults and no rails",
    )
    p.add_argument("--config", help="YAML config (may name a preset and override any key)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--episodic", action="store_true", help="reset to the source state whenever the domain changes")
    p.add_argument("--probabilities", action="store_true", help="add class probabilities to predictions.jsonl")
    p.add_argument("--out", required=True, help="output directory (predictions.jsonl, events.jsonl, summary.json)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="the main job on the bundled model and data: frozen vs adapted, torch-free")
    p.add_argument("--out", default="edgetta-demo", help="output directory for demo.png and demo.json")
    p.add_argument(
        "--recipes",
        default="frozen,demo",
        help="comma-separated: 'demo' (EATA + rails) or any preset (frozen, bn, tent, eata, sar, ...)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit-per-phase", type=int, help="use only the first N images of each phase (quick runs)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="the streaming daemon: streams in, predictions out, checkpoints, metrics")
    p.add_argument("config", help="daemon config (YAML): artifact, adapt, state_dir, checkpoint, metrics, streams")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue every stream from its checkpoint (the default when one exists)"
    )
    mode.add_argument("--fresh", action="store_true", help="start over: discard checkpoints, truncate outputs")
    p.add_argument("--max-items", type=int, metavar="N", help="end each stream after N items of this run (tests)")
    p.set_defaults(func=cmd_run)

    for module_name in _COMMAND_GROUPS:
        importlib.import_module(module_name).register(sub)
    return parser


# Command groups that live next to their feature: each module has ``register(subparsers)`` and imports
# nothing heavy at module level (the feature's own imports happen inside the command functions).
_COMMAND_GROUPS: tuple[str, ...] = ("edgetta.sleep.cli", "edgetta.sync.cli", "edgetta.cloud.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgettaError as exc:
        print(f"edgetta {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (permissions, a full disk): a message, not a traceback
        print(f"edgetta {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
