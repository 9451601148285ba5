"""``edgetta sleep ...`` commands: stage one night, evaluate a cohort, write the synthetic cohort.

Module-level imports stay light (argparse only): each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_CHANNEL = "EEG Fpz-Cz"


def _output_dir(path: str) -> Path:
    from edgetta.errors import OutputError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is an existing file; pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --out {out}: {exc.strerror or exc}") from exc
    return out


def _config(args: argparse.Namespace) -> Any:
    from edgetta.runtime.config import load_config
    from edgetta.sleep.pipeline import DEFAULT_PRESET

    if args.config:
        return load_config(args.config)
    return load_config(preset=args.preset or DEFAULT_PRESET)


def _adapters(args: argparse.Namespace) -> Any:
    from edgetta.errors import ConfigError
    from edgetta.sleep.pipeline import make_adapters

    if args.median < 1:
        raise ConfigError(f"--median {args.median}: give a window of 1 (off) or more epochs")
    return make_adapters(args.artifact, _config(args))


def _stage(args: argparse.Namespace, adapters: Any, psg: Path, hypnogram: Path | None) -> Any:
    from edgetta.sleep.pipeline import stage_night
    from edgetta.sleep.sleepedf import read_night

    night = read_night(psg, hypnogram, channel=args.channel)
    return stage_night(
        night.eeg,
        adapters,
        labels=night.labels if hypnogram is not None else None,
        onsets=night.onsets,
        rate=night.rate,
        record_id=night.record_id,
        median=args.median,
    )


def _summary(m: dict[str, Any]) -> str:
    f, a = m["frozen"], m["adapted"]
    return (
        f"kappa {f['kappa']:.3f} -> {a['kappa']:.3f}, macro-F1 {f['macro_f1']:.3f} -> {a['macro_f1']:.3f}, "
        f"accuracy {f['accuracy']:.3f} -> {a['accuracy']:.3f} (frozen -> adapted)"
    )


def cmd_stage(args: argparse.Namespace) -> int:
    from edgetta.errors import DataError
    from edgetta.sleep.plots import plot_hypnogram
    from edgetta.sleep.report import night_metrics, write_epochs_csv, write_json

    psg = Path(args.psg)
    hypnogram = Path(args.hypnogram) if args.hypnogram else None
    for label, path in (("PSG", psg), ("hypnogram", hypnogram)):
        if path is not None and not path.is_file():
            raise DataError(f"{label} file {path} does not exist; pass the path of an EDF/EDF+ file")
    out = _output_dir(args.out)
    night = _stage(args, _adapters(args), psg, hypnogram)
    write_epochs_csv(night, out / "epochs.csv")
    lines = [f"{night.record_id}: {len(night)} epochs staged ({night.info['recipe']}) -> {out / 'epochs.csv'}"]
    skipped = plot_hypnogram(night, out / "hypnogram.png")
    lines.append(skipped or f"hypnogram: {out / 'hypnogram.png'}")
    if night.labelled:
        metrics = night_metrics(night)
        write_json(metrics, out / "metrics.json")
        lines.append(f"{_summary(metrics)} -> {out / 'metrics.json'}")
    run = night_metrics(night)["run"] if night.labelled else None
    if run:
        lines.append(f"adapted on {run['adapted']} epochs, gated {run['gated']}, flagged {run['flagged']}")
    print("\n".join(lines))
    return 0


def _pairs(inputs: list[str]) -> list[tuple[Path, Path | None]]:
    from edgetta.errors import DataError
    from edgetta.sleep.sleepedf import find_pairs

    pairs: list[tuple[Path, Path | None]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = [(Path(p.psg), Path(p.hypnogram) if p.hypnogram else None) for p in find_pairs(path)]
            if not found:
                raise DataError(f"{path} holds no PSG/hypnogram EDF pairs (SC4ssN?0-PSG.edf + SC4ssN??-Hypnogram.edf)")
            pairs += found
        elif path.is_file():
            match = [p for p in find_pairs(path.parent) if Path(p.psg).resolve() == path.resolve()]
            if not match:
                raise DataError(f"{path}: no hypnogram found next to it; eval needs scored nights")
            pairs.append((Path(match[0].psg), Path(match[0].hypnogram) if match[0].hypnogram else None))
        else:
            raise DataError(f"{path} does not exist; pass directories of PSG/hypnogram pairs or PSG files")
    return pairs


def cmd_eval(args: argparse.Namespace) -> int:
    from edgetta.errors import DataError
    from edgetta.sleep.plots import plot_cohort
    from edgetta.sleep.report import cohort_metrics, write_cohort_tables, write_epochs_csv, write_json

    pairs = [(psg, hyp) for psg, hyp in _pairs(args.inputs) if hyp is not None]
    if not pairs:
        raise DataError("no scored nights (PSG with a hypnogram) among the inputs")
    out = _output_dir(args.out)
    adapters = _adapters(args)
    nights = []
    for psg, hyp in pairs:
        night = _stage(args, adapters, psg, hyp)  # the adapted model is reset at each record
        nights.append(night)
        (out / "records").mkdir(exist_ok=True)
        write_epochs_csv(night, out / "records" / f"{night.record_id}.csv")
        print(f"{night.record_id}: {len(night)} epochs", flush=True)
    cohort = cohort_metrics(nights)
    write_json(cohort, out / "metrics.json")
    write_cohort_tables(cohort, out)
    skipped = plot_cohort(cohort, out / "cohort.png")
    s = cohort["summary"]
    print(
        f"{s['records']} records: mean kappa {s['mean_kappa']['frozen']:.3f} -> {s['mean_kappa']['adapted']:.3f}, "
        f"worst {s['worst_kappa']['frozen']:.3f} -> {s['worst_kappa']['adapted']:.3f}, "
        f"hurt by > 0.02 kappa: {s['hurt_fraction']:.0%}; pooled {_summary(cohort['pooled'])}"
    )
    print(skipped or f"table: {out / 'cohort.md'}, plot: {out / 'cohort.png'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from edgetta.errors import ConfigError
    from edgetta.sleep.synth import SHIFTS, default_shifts, write_cohort

    if args.subjects < 1:
        raise ConfigError(f"--subjects {args.subjects}: give at least 1")
    if args.shifts == "default":
        shifts = default_shifts(args.subjects)
    elif args.shifts == "none":
        shifts = [None] * args.subjects
    else:
        names = [s.strip() for s in args.shifts.split(",") if s.strip()]
        unknown = [n for n in names if n not in SHIFTS]
        if unknown or not names:
            raise ConfigError(
                f"--shifts {args.shifts!r}: unknown shift {', '.join(unknown) or '(none given)'}; "
                f"use 'default', 'none' or a comma-separated list of {', '.join(SHIFTS)}"
            )
        shifts = [names[i % len(names)] for i in range(args.subjects)]
    out = _output_dir(args.out)
    records = write_cohort(out, args.subjects, seed=args.seed, shifts=shifts, hours=args.hours)
    shifted = sum(s is not None for s in shifts)
    print(
        f"{len(records)} synthetic nights (EDF+ PSG and hypnogram pairs, {shifted} with a recording shift) "
        f"written to {out}"
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", default=DEFAULT_CHANNEL, help=f"EEG channel by name (default {DEFAULT_CHANNEL!r})")
    p.add_argument("--artifact", help="artifact directory (default: the bundled synthetic-trained network)")
    p.add_argument("--config", help="YAML runtime config (may name a preset and override any key)")
    p.add_argument("--preset", help="a bundled preset instead of the default stablesleep (e.g. bn_ema, tent)")
    p.add_argument("--median", type=int, default=1, help="causal median filter of the stages over K epochs (1: off)")
    p.add_argument("--out", required=True, help="output directory")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edgetta sleep stage|eval|synth`` to the ``edgetta`` parser."""
    group = sub.add_parser("sleep", help="sleep staging from one EEG lead: stage a night, evaluate a cohort")
    commands = group.add_subparsers(dest="sleep_command", required=True, metavar="{stage,eval,synth}")

    p = commands.add_parser("stage", help="stage one night, frozen and adapted (StableSleep) side by side")
    p.add_argument("psg", help="PSG EDF/EDF+ file")
    p.add_argument("--hypnogram", help="hypnogram EDF+ (or CSV of onset, duration, stage): adds metrics.json")
    _common(p)
    p.set_defaults(func=cmd_stage)

    p = commands.add_parser("eval", help="per-record and pooled metrics of a cohort, frozen vs adapted")
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILES", help="directories of PSG/hypnogram pairs or PSG files")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("synth", help="write a synthetic cohort (EDF+ PSG and hypnogram pairs)")
    p.add_argument("--subjects", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hours", type=float, default=8.0, help="hours per night")
    p.add_argument(
        "--shifts",
        default="default",
        help="recording shifts: 'default' (first half clean, the rest cycling through every shift), 'none', or a "
        "comma-separated list cycled over the subjects (gain, alpha_freq, slope, line_noise, wander, pops, rate, "
        "mixed)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_synth)
