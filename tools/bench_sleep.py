"""Sleep-staging benchmark: adapted vs frozen on held-out SYNTHETIC subjects with recording shifts.

    python tools/bench_sleep.py --out docs/sleep_bench.json                 # test subjects (seed 1)
    python tools/bench_sleep.py --seed 2 --recipes stablesleep,bn_ema,tent  # validation subjects, for tuning

The bundled artifact was trained on clean synthetic subjects of seed 0; here every subject comes from
another seed (another physiology) and carries one recording shift (``edgetta.sleep.synth.SHIFTS``) or none.
Each night is staged by ``edgetta.sleep.pipeline.stage_night`` exactly as ``edgetta sleep stage`` does:
signal-quality flags, causal running z-score, one call per 30 s epoch, reset at each record. Reported per
recipe: Cohen's kappa and macro-F1 per shift type (frozen, adapted), mean and worst record, the fraction of
records where adaptation lowered kappa by more than 0.02, the per-epoch latency of the adapted call at
batch 1 (forward + adaptation step + rails), and the process's peak RSS. Run it with ``nice`` on a shared
machine; latency is then an upper bound.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetta.runtime.config import load_config, preset_names  # noqa: E402
from edgetta.sleep.pipeline import DEFAULT_ARTIFACT, make_adapters, stage_night  # noqa: E402
from edgetta.sleep.report import night_metrics  # noqa: E402
from edgetta.sleep.sleepedf import read_night  # noqa: E402
from edgetta.sleep.synth import SHIFTS, write_cohort  # noqa: E402


def _config(name: str) -> Any:
    if name in preset_names():
        return load_config(preset=name)
    return load_config(name)  # a YAML file


def _row(records: list[dict[str, Any]]) -> dict[str, Any]:
    f = np.array([r["frozen"]["kappa"] for r in records])
    a = np.array([r["adapted"]["kappa"] for r in records])
    ff = np.array([r["frozen"]["macro_f1"] for r in records])
    af = np.array([r["adapted"]["macro_f1"] for r in records])
    return {
        "records": len(records),
        "frozen_kappa": float(f.mean()),
        "adapted_kappa": float(a.mean()),
        "frozen_mf1": float(ff.mean()),
        "adapted_mf1": float(af.mean()),
        "worst_frozen_kappa": float(f.min()),
        "worst_adapted_kappa": float(a.min()),
        "worst_delta_kappa": float((a - f).min()),
        "hurt": int(np.sum(a - f < -0.02)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="cohort seed: 1 = test subjects, 2 = validation")
    parser.add_argument("--per-shift", type=int, default=2, help="subjects per shift type (and clean)")
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--recipes", default="stablesleep", help="comma-separated presets or YAML config files")
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--median", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    plan = [s for s in (None, *SHIFTS) for _ in range(args.per_shift)]
    results: dict[str, Any] = {
        "command": "python tools/bench_sleep.py " + " ".join(sys.argv[1:]),
        "cohort": {"synthetic": True, "seed": args.seed, "hours": args.hours, "subjects": len(plan)},
        "artifact": args.artifact.name,
        "recipes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        written = write_cohort(tmp, len(plan), seed=args.seed, shifts=plan, hours=args.hours)
        nights = [(r, read_night(r.psg, r.hypnogram)) for r in written]
        print(f"{len(nights)} synthetic nights in {time.perf_counter() - started:.0f} s", flush=True)
    for name in args.recipes.split(","):
        adapters = make_adapters(args.artifact, _config(name))
        records, latency = [], []
        for rec, night in nights:
            staged = stage_night(
                night.eeg, adapters, labels=night.labels, rate=night.rate, record_id=rec.record_id, median=args.median
            )
            m = night_metrics(staged)
            m["shift"] = rec.shift or "clean"
            records.append(m)
            latency.append(staged.latency)
            print(
                f"{name} {rec.record_id} {m['shift']:>10}: kappa {m['frozen']['kappa']:.3f} -> "
                f"{m['adapted']['kappa']:.3f}  flagged {m['run']['flagged']}",
                flush=True,
            )
        lat = np.concatenate(latency) * 1000.0
        present = [s for s in ["clean", *SHIFTS] if any(r["shift"] == s for r in records)]
        by_shift = {s: _row([r for r in records if r["shift"] == s]) for s in present}
        results["recipes"][name] = {
            "all": _row(records),
            "hurt_fraction": float(np.mean([r["delta_kappa"] < -0.02 for r in records])),
            "by_shift": by_shift,
            "latency_ms": {
                "median": float(np.median(lat)),
                "p95": float(np.percentile(lat, 95)),
                "max": float(lat.max()),
            },
            "per_record": [
                {
                    "record": r["record"],
                    "shift": r["shift"],
                    "frozen_kappa": r["frozen"]["kappa"],
                    "adapted_kappa": r["adapted"]["kappa"],
                    "frozen_mf1": r["frozen"]["macro_f1"],
                    "adapted_mf1": r["adapted"]["macro_f1"],
                    "run": r["run"],
                }
                for r in records
            ],
        }
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results["recipes"].items():
        lines += [f"\n{name}: kappa / macro-F1, frozen -> adapted (mean over records; worst record)\n"]
        lines += ["| shift | records | kappa frozen | kappa adapted | MF1 frozen | MF1 adapted | worst delta kappa |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for shift, row in [*r["by_shift"].items(), ("**all**", r["all"])]:
            lines.append(
                f"| {shift} | {row['records']} | {row['frozen_kappa']:.3f} | {row['adapted_kappa']:.3f} | "
                f"{row['frozen_mf1']:.3f} | {row['adapted_mf1']:.3f} | {row['worst_delta_kappa']:+.3f} |"
            )
        a = r["all"]
        lat = r["latency_ms"]
        lines.append(
            f"\nworst record kappa {a['worst_frozen_kappa']:.3f} -> {a['worst_adapted_kappa']:.3f}; "
            f"hurt by > 0.02 kappa: {a['hurt']} of {a['records']} ({r['hurt_fraction']:.0%}); "
            f"latency per epoch (batch 1, with adaptation) median {lat['median']:.2f} ms, p95 {lat['p95']:.2f} ms"
        )
    lines.append(f"peak RSS {results['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
