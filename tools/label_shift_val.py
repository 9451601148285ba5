#!/usr/bin/env python
"""Validation sweep for the label-shift guard's margin, on held-out corruptions only.

The 15 test corruptions are never used here. Validation corruptions (own minimal implementations of two
of ImageNet-C's four extra corruptions, CIFAR-10-C severity-5 constants): speckle noise (x + x*N(0, 0.2),
clipped) and Gaussian blur (sigma 1.0 px of 32, rescaled to 28 px: 0.875). Spatter and saturate are not
implemented (saturate is a no-op on greyscale images). For each corruption and for clean images: an
i.i.d. stream (covariate shift only) and a label-sorted stream, batch 64, with the bn and tent presets and
each margin in ``--margins``; error % per cell.

    python tools/label_shift_val.py --samples 1000 --margins 0.05,0.1,0.2,0.3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scipy.ndimage import gaussian_filter  # noqa: E402

from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import load_config  # noqa: E402

ART = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"


def speckle_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0
    return np.clip(x + x * rng.normal(scale=0.2, size=x.shape), 0, 1) * 255


def gaussian_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0
    return np.clip(np.stack([gaussian_filter(i, 1.0 * 28 / 32) for i in x]), 0, 1) * 255


def clean(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return images.astype(np.float64)


VALIDATION = {"clean": clean, "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur}


def stream_error(config, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    adapter = Adapter(ART, config)
    preds = np.concatenate([adapter.process(x[i : i + batch]).preds for i in range(0, len(x), batch)])
    return float(100 * np.mean(preds != y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--margins", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--presets", default="bn,tent")
    args = ap.parse_args()
    images, labels = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(images), args.samples, replace=False))
    margins = [float(m) for m in args.margins.split(",")]
    header = ["stream", "frozen"] + [f"{p} none" for p in args.presets.split(",")]
    header += [f"{p} m={m:g}" for p in args.presets.split(",") for m in margins]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, fn in VALIDATION.items():
        x = to_model_input(fn(images[idx], np.random.default_rng(1)).round().astype(np.uint8))
        y = labels[idx]
        order = np.argsort(y, kind="stable")
        for kind, xs, ys in (("iid", x, y), ("label-sorted", x[order], y[order])):
            row = [f"{name} {kind}", f"{stream_error(load_config(preset='frozen'), xs, ys):.1f}"]
            for p in args.presets.split(","):
                rails = [r for r in load_config(preset=p).rails if r != "label_shift_guard"]
                row.append(f"{stream_error(load_config(preset=p, rails=rails), xs, ys):.1f}")
            for p in args.presets.split(","):
                for m in margins:
                    base = [r for r in load_config(preset=p).rails if r != "label_shift_guard"]
                    cfg = load_config(preset=p, rails=[*base, {"name": "label_shift_guard", "margin_fraction": m}])
                    row.append(f"{stream_error(cfg, xs, ys):.1f}")
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
