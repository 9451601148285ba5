#!/usr/bin/env python
"""Validation sweep for the label-shift guard's thresholds, on held-out corruptions only.

The 15 test corruptions are never used here. Validation corruptions (own minimal implementations of three
of ImageNet-C's four extra corruptions, CIFAR-10-C severity-5 constants where they exist): speckle noise
(x + x*N(0, 0.2), clipped), Gaussian blur (sigma 1.0 px of 32, rescaled to 28 px: 0.875) and spatter in
its mud form (smoothed Gaussian noise, thresholded into splashes that are blended toward mud's grey level).
Saturate is a no-op on greyscale images and is left out. For each corruption and for clean images: an
i.i.d. stream (covariate shift only) and a label-sorted stream, batch 64, with each preset without the
guard and with it at every (margin, max misfit) pair; error % per cell, printed as a table and written
row by row to ``--out`` (JSON).

    python tools/label_shift_val.py --samples 1000 --margins 0.03 --max-misfits 0.5,0.75,1,1e9
"""

from __future__ import annotations

import argparse
import json
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
GUARD = "label_shift_guard"


def speckle_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0
    return np.clip(x + x * rng.normal(scale=0.2, size=x.shape), 0, 1) * 255


def gaussian_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0
    return np.clip(np.stack([gaussian_filter(i, 1.0 * 28 / 32) for i in x]), 0, 1) * 255


def spatter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud splashes: N(0.65, 0.3) noise smoothed (sigma 1), pixels above 0.69 become mud (grey level 0.17)."""
    x = images / 255.0
    layer = np.stack([gaussian_filter(n, 1.0) for n in rng.normal(0.65, 0.3, size=x.shape)])
    mud = gaussian_filter((layer > 0.69).astype(np.float64), (0, 0.5, 0.5))
    return np.clip(x * (1 - mud) + 0.17 * mud, 0, 1) * 255


def clean(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return images.astype(np.float64)


VALIDATION = {"clean": clean, "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "spatter": spatter}


def stream_error(config, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    adapter = Adapter(ART, config)
    preds = np.concatenate([adapter.process(x[i : i + batch]).preds for i in range(0, len(x), batch)])
    return float(100 * np.mean(preds != y))


def guarded(preset: str, margin: float | None, drop: float | None):
    """The preset without the guard (``margin`` None) or with it at ``margin`` and ``drop``."""
    base = [r for r in load_config(preset=preset).rails if (r if isinstance(r, str) else r["name"]) != GUARD]
    if margin is None:
        return load_config(preset=preset, rails=base)
    rail = {"name": GUARD, "margin_fraction": margin, "max_misfit": drop}
    return load_config(preset=preset, rails=[*base[:1], rail, *base[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--margins", default="0.03")
    ap.add_argument("--max-misfits", default="0.5,0.75,1,1e9")
    ap.add_argument("--presets", default="bn")
    ap.add_argument("--corruptions", default=",".join(VALIDATION))
    ap.add_argument("--out", type=Path, default=None, help="JSON file, rewritten after every row")
    args = ap.parse_args()
    images, labels = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(images), args.samples, replace=False))
    presets = args.presets.split(",")
    pairs = [(float(m), float(d)) for m in args.margins.split(",") for d in args.max_misfits.split(",")]
    header = ["stream", "frozen"] + [f"{p} none" for p in presets]
    header += [f"{p} m={m:g} t={d:g}" for p in presets for m, d in pairs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows: dict[str, dict[str, float]] = {}
    for name in args.corruptions.split(","):
        x = to_model_input(VALIDATION[name](images[idx], np.random.default_rng(1)).round().astype(np.uint8))
        y = labels[idx]
        order = np.argsort(y, kind="stable")
        for kind, xs, ys in (("iid", x, y), ("label-sorted", x[order], y[order])):
            cells = {"frozen": stream_error(load_config(preset="frozen"), xs, ys)}
            cells |= {f"{p} none": stream_error(guarded(p, None, None), xs, ys) for p in presets}
            for p in presets:
                for m, d in pairs:
                    cells[f"{p} m={m:g} t={d:g}"] = stream_error(guarded(p, m, d), xs, ys)
            rows[f"{name} {kind}"] = cells
            print(f"| {name} {kind} | " + " | ".join(f"{v:.1f}" for v in cells.values()) + " |", flush=True)
            if args.out is not None:
                args.out.write_text(json.dumps({"samples": args.samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
