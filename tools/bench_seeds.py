#!/usr/bin/env python
"""Mean and standard error over seeds of tools/bench.py runs (issue 11, point 6).

Reads the JSON files that ``tools/bench.py --seed S --json FILE`` wrote (one per seed) and prints, per
model and method, the episodic and continual severity-5 mean error as mean +- standard error over the
seeds (sample standard deviation / sqrt(n)), the continual error minus the baseline's (BN refresh, else
frozen) paired by seed (each seed draws its own image subset, so the paired difference is the sharper
comparison), the backward passes and the wall time per method.

    for s in 0 1 2; do python tools/bench.py --models resnet_bn --per-domain 200 --severities 5 --wild "" \\
        --no-wild-variant --seed $s --out runs/seeds/seed$s.md; done
    python tools/bench_seeds.py runs/seeds/seed0.json runs/seeds/seed1.json runs/seeds/seed2.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def backward_passes(res: dict, severity: str, method: str) -> float:
    """Backward passes of ``method`` over the episodic and the continual streams of one run."""
    return float(res["episodic"][severity][method]["backward_passes"] + res["continual"][method]["backward_passes"])


def ref(per: list[dict]) -> str:
    """The baseline a gradient method must beat: BN refresh when it ran, else the frozen model."""
    return "bn" if "bn" in per[0]["continual"] else "frozen"


def table(runs: list[dict], severity: str = "5") -> list[str]:
    lines = []
    for model in runs[0]["models"]:
        per = [r["models"][model] for r in runs]
        lines += [
            f"{model} ({len(runs)} seeds: {', '.join(str(r['meta']['seed']) for r in runs)})",
            "",
            f"| method | episodic sev. 5 | continual sev. 5 | continual minus {ref(per)} (paired) "
            "| backward passes (episodic + continual) | wall time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for method in per[0]["episodic"][severity]:
            epi = mean_se([p["episodic"][severity][method]["mean"] for p in per])
            con = mean_se([p["continual"][method]["mean"] for p in per])
            diff = mean_se([p["continual"][method]["mean"] - p["continual"][ref(per)]["mean"] for p in per])
            bw = mean_se([backward_passes(p, severity, method) for p in per])
            secs = mean_se([p.get("seconds", {}).get(method, float("nan")) for p in per])
            lines.append(
                f"| {method} | {epi[0]:.2f} +- {epi[1]:.2f} | {con[0]:.2f} +- {con[1]:.2f} "
                f"| {diff[0]:+.2f} +- {diff[1]:.2f} | {bw[0]:.0f} | {secs[0]:.0f} +- {secs[1]:.0f} |"
            )
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [json.loads(f.read_text()) for f in args.files]
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
