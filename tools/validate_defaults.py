#!/usr/bin/env python
"""Validation sweep for the gradient presets' learning rate and EATA's redundancy threshold, on held-out
corruptions only (docs/validation.md).

The 15 test corruptions are never used. The stream: ``--samples`` Fashion-MNIST test images under speckle
noise, then the same number of other images under Gaussian blur (the validation corruptions of
tools/label_shift_val.py), continual (no reset between them), batch 64, the bundled BN model. Each
preset runs with its rails at every SGD base lr in ``--lrs`` (scaled by batch/64); EATA with its
old fixed eps 0.05 and with the class-count rule (eps = sqrt(2 / C)). Prints error % per corruption and
overall, and the updates per run.

    python tools/validate_defaults.py --samples 2000 --lrs 0.00025,0.001,0.004,0.016
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import load_config  # noqa: E402
from tools.label_shift_val import VALIDATION  # noqa: E402

ART = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"
CORRUPTIONS = ("speckle_noise", "gaussian_blur")


def stream(samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist("test")
    order = np.random.default_rng(0).permutation(len(images))
    xs, ys, ds = [], [], []
    for d, name in enumerate(CORRUPTIONS):
        idx = order[d * samples : (d + 1) * samples]
        xs.append(to_model_input(VALIDATION[name](images[idx], np.random.default_rng(1 + d)).round().astype(np.uint8)))
        ys.append(labels[idx])
        ds.append(np.full(len(idx), d))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)


def run(config, x: np.ndarray, y: np.ndarray, d: np.ndarray, batch: int = 64) -> list[float]:
    adapter = Adapter(ART, config)
    preds = np.concatenate([adapter.process(x[i : i + batch]).preds for i in range(0, len(x), batch)])
    wrong = preds != y
    return [100 * float(wrong[d == k].mean()) for k in range(len(CORRUPTIONS))] + [
        100 * float(wrong.mean()),
        adapter.totals["updates"],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="images per validation corruption")
    ap.add_argument("--lrs", default="0.00025,0.001,0.004,0.016", help="SGD base lrs at batch 64")
    args = ap.parse_args()
    x, y, d = stream(args.samples)
    rows = [("frozen", load_config(preset="frozen")), ("bn", load_config(preset="bn"))]
    for lr in (float(v) for v in args.lrs.split(",")):
        rows.append((f"tent lr {lr:g}", load_config(preset="tent", method_args={"lr": lr})))
        rows.append((f"eata lr {lr:g} eps 0.05", load_config(preset="eata", method_args={"lr": lr, "eps": 0.05})))
        rows.append((f"eata lr {lr:g} eps rule", load_config(preset="eata", method_args={"lr": lr, "eps": None})))
    print("| recipe | " + " | ".join(CORRUPTIONS) + " | all | updates |")
    print("|---|" + "---|" * (len(CORRUPTIONS) + 2))
    for name, config in rows:
        cells = run(config, x, y, d)
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells[:-1]) + f" | {cells[-1]} |", flush=True)


if __name__ == "__main__":
    main()
