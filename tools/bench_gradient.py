#!/usr/bin/env python
"""Does a gradient step pay over BN refresh (BN model) or over the frozen model (GroupNorm model)?

Issue 11, point 3. One continual stream (no reset) of ``--per-domain`` images per corruption at severity 5,
batch 64, for each model and method. ``--phase val`` runs the validation corruptions (speckle noise,
Gaussian blur, spatter from tools/label_shift_val.py) for the learning-rate sweep; ``--phase test`` the 15
test corruptions at the learning rates chosen on validation (``--lr-tent``/``--lr-eata``). Methods use
tools/bench.py's settings (Adam; EATA E0 = 0.4 ln C, eps 0.4, Fisher beta 1) with ``lr`` overridden.
Per run: mean and per-corruption error, updates, backward passes, seconds; the JSON is rewritten after
every run, so a partial run keeps what finished.

    python tools/bench_gradient.py --phase val --lrs 0.0003,0.001,0.003 --out runs/grad/val.json
    python tools/bench_gradient.py --phase test --lr-tent 0.001 --lr-eata 0.001 --out runs/grad/test.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import KNOWN_ARTIFACTS, METHOD_SETTINGS, subset  # noqa: E402
from label_shift_val import VALIDATION  # noqa: E402

from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.data.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import load_config  # noqa: E402

BASELINE = {"resnet_bn": "bn", "resnet_gn": "frozen", "tiny_vit": "frozen"}  # BN refresh cannot act on GN/LN


def config(method: str, lr: float | None):
    spec = METHOD_SETTINGS[method]
    args = dict(spec["method_args"])
    if lr is not None:
        args["lr"] = lr
    return load_config(preset=method, name=method, method_args=args, rails=list(spec["rails"]))


def run(art: Path, method: str, lr: float | None, domains: dict[str, np.ndarray], y: np.ndarray) -> dict:
    adapter = Adapter(art, config(method, lr))
    t0 = time.time()
    per = {}
    for name, x in domains.items():
        preds = np.concatenate([adapter.process(x[i : i + 64]).preds for i in range(0, len(x), 64)])
        per[name] = float(100 * np.mean(preds != y))
    return {
        "method": method,
        "lr": lr,
        "mean": float(np.mean(list(per.values()))),
        "per_corruption": per,
        "updates": int(adapter.totals.get("updates", 0)),
        "backward_passes": int(adapter.totals.get("backward_passes", 0)),
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=("val", "test"), default="val")
    ap.add_argument("--models", default="resnet_bn,resnet_gn")
    ap.add_argument("--methods", default="tent,eata")
    ap.add_argument("--lrs", default="0.0003,0.001,0.003", help="val phase: learning rates swept")
    ap.add_argument("--lr-tent", type=float, default=1e-3)
    ap.add_argument("--lr-eata", type=float, default=1e-3)
    ap.add_argument("--per-domain", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="artifact directory of a model not bundled (e.g. tiny_vit=runs/fmnist_tiny_vit); repeatable",
    )
    args = ap.parse_args()
    for spec in args.artifact:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--artifact {spec!r}: give MODEL=DIR")
        KNOWN_ARTIFACTS[name] = Path(path)
    images, labels = load_fashion_mnist("test")
    idx = subset(len(images), args.per_domain, 0)
    y = labels[idx].astype(np.int64)
    if args.phase == "val":
        rng = np.random.default_rng(1)
        domains = {n: to_model_input(VALIDATION[n](images[idx], rng).round().astype(np.uint8)) for n in VALIDATION}
        domains.pop("clean")
        runs = [(m, float(lr)) for m in args.methods.split(",") for lr in args.lrs.split(",")]
    else:
        domains = {n: to_model_input(corrupt(images[idx], n, 5, 0)) for n in CORRUPTIONS}
        chosen = {"tent": args.lr_tent, "eata": args.lr_eata}
        runs = [(m, chosen[m]) for m in args.methods.split(",")]
    results: dict = {"phase": args.phase, "per_domain": int(len(y)), "corruptions": list(domains), "models": {}}
    for model in args.models.split(","):
        art = KNOWN_ARTIFACTS[model]
        rows = results["models"].setdefault(model, [])
        for method, lr in [(BASELINE[model], None), *runs]:
            row = run(art, method, lr, domains, y)
            rows.append(row)
            note = f"{row['mean']:.2f} ({row['updates']} updates, {row['seconds']} s)"
            print(f"{model} {method} lr={lr}: {note}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
