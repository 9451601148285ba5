#!/usr/bin/env python
"""Benchmark of cloud-edge sync (docs/sync.md): what the device uploads, what it costs, what it gains.

1. Selection (device only, no server): the bundled Fashion-MNIST model with the device's forward-only method
   (``bn`` preset, batches of 16) streams Fashion-MNIST-C test images per corruption and severity; CEMA's
   selection (paper defaults) decides per batch. Reported: fraction uploaded, excluded by reason.
2. Bytes up per sample: the upload body (gzip-compressed safetensors of float32 model inputs + entropy) for a
   batch of 64 samples of that stream, divided by 64.
3. The loop (``--loop``, needs ``edgetta cloud serve``, i.e. torch): the two documented processes on 127.0.0.1
   for each upload policy (CEMA, upload-all, a random subset of CEMA's size): the edge streams phase 1 of a shifted
   stream (uploads), the cloud distils and publishes, the edge applies the bundle; then phase 2 (other images,
   same shift) measures accuracy. Reported: uploaded fraction, accuracy vs the frozen edge model and vs the device
   without bundles, bytes down per bundle, time from the first upload to the applied bundle.

    python tools/bench_sync.py --per-domain 1000 --json docs/sync.json
    python tools/bench_sync.py --loop --json docs/sync.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetta.data.corruptions import corrupt  # noqa: E402
from edgetta.data.fashion_mnist import load_fashion_mnist  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import load_config  # noqa: E402
from edgetta.sync._edge_client import encode_samples  # noqa: E402
from edgetta.sync.selection import CemaSelector  # noqa: E402

ART = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "fog", "contrast")


def domain_images(name: str, severity: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded Fashion-MNIST test images with corruption ``name`` at ``severity`` (uint8 [n, 1, 28, 28])."""
    images, labels = load_fashion_mnist("test")
    idx = np.random.default_rng(seed).permutation(len(labels))[:n]
    return corrupt(images[idx], name, severity, seed=seed)[:, None], labels[idx]


def selection(per_domain: int, batch: int, seed: int) -> dict[str, Any]:
    """Part 1 and 2: CEMA's upload fraction per severity (averaged over corruptions), and bytes per sample."""
    out: dict[str, Any] = {"per_severity": {}, "per_domain": {}}
    body_bytes: list[float] = []
    for severity in (5, 4, 3, 2, 1):
        fractions = []
        for name in CORRUPTIONS:
            images, _ = domain_images(name, severity, per_domain, seed)
            adapter = Adapter(ART, load_config(preset="bn"))
            selector = CemaSelector(adapter.artifact.num_classes)
            for start in range(0, len(images), batch):
                result = adapter.process(images[start : start + batch])
                selector.select(result.logits)
            c = selector.counts()
            fractions.append(c["selected"] / c["seen"])
            out["per_domain"][f"{name}-{severity}"] = {k: v / c["seen"] for k, v in c.items() if k != "seen"}
            if severity == 5:
                x = adapter.inputs.prepare(images[:64]).rows
                ent = np.full(len(x), 0.5, np.float32)
                body = encode_samples(x, ent, device_id="cam0", base_sha256="0" * 64, batch_seq=1)
                body_bytes.append(len(body) / len(x))
        out["per_severity"][severity] = float(np.mean(fractions))
        print(f"severity {severity}: CEMA uploads {np.mean(fractions):.1%} (mean over {len(CORRUPTIONS)} shifts)")
    out["bytes_up_per_sample"] = float(np.mean(body_bytes))
    out["raw_bytes_per_sample"] = 4 * 28 * 28 + 4
    print(f"bytes up per sample: {out['bytes_up_per_sample']:.0f} (raw float32 input + entropy: {4 * 28 * 28 + 4})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-domain", type=int, default=1000, help="images per corruption and severity")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", action="store_true", help="also run the two-process loop (needs torch)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {"selection": selection(args.per_domain, args.batch, args.seed)}
    if args.loop:
        from tools_bench_sync_loop import run_loops  # noqa: F401  (filled in below)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = "python tools/bench_sync.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
