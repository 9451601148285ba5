"""Measure the CEMA learner alone (no HTTP, no device): accuracy of the bundled edge model before and after
distillation from the demo teacher, per Fashion-MNIST-C corruption, and the size of one bundle.

For each corruption: ``--stream`` test images arrive as uploads of 64 (every one uploaded: the edge's
selection is the sync-edge benchmark's business), the learner runs with the paper's defaults, and accuracy is
measured on ``--held-out`` other test images of the same corruption::

    nice -n 10 python tools/cloud_learner_report.py --out docs/cloud_learner.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from edgetta.cloud.demo import fmnist_student, fmnist_teacher  # noqa: E402
from edgetta.cloud.learner import CemaConfig, CemaLearner  # noqa: E402
from edgetta.cloud.student import build_student  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.data.corruptions import corrupt  # noqa: E402
from edgetta.sync.bundle import create_bundle  # noqa: E402

SHIFTS = [("gaussian_noise", 5), ("impulse_noise", 5), ("defocus_blur", 5), ("fog", 4), ("contrast", 4)]


def predict(model: torch.nn.Module, x: torch.Tensor, params=None, batch_stats: bool = True) -> np.ndarray:
    """Top-1 predictions in batches of 64; ``batch_stats``: BatchNorm uses each batch's statistics."""
    model = copy.deepcopy(model)
    if params:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=False)
    model.eval()
    for module in model.modules():
        if batch_stats and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 64]).argmax(1) for i in range(0, len(x), 64)]).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", type=int, default=512)
    parser.add_argument("--held-out", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    artifact = load_artifact(ROOT / "edgetta" / "assets" / "fmnist_resnet_bn")
    edge = build_student(fmnist_student(), artifact)
    images, labels = load_fashion_mnist("test")
    pick = np.random.default_rng(args.seed).permutation(len(images))[: args.stream + args.held_out]
    rows = []
    bundle_bytes = None
    for name, severity in SHIFTS:
        x = to_model_input(corrupt(images[pick], name, severity, seed=args.seed))
        stream, held_x, held_y = x[: args.stream], torch.from_numpy(x[args.stream :]), labels[pick][args.stream :]
        start = time.perf_counter()
        learner = CemaLearner(fmnist_teacher(), copy.deepcopy(edge), artifact, CemaConfig())
        for i in range(0, len(stream), 64):
            learner.add(stream[i : i + 64])
            while learner.step():
                pass
        seconds = time.perf_counter() - start
        params = learner.params()
        if bundle_bytes is None:
            bundle_bytes = len(create_bundle(artifact, params, version=1, private_key=Ed25519PrivateKey.generate()))

        def acc(p: np.ndarray, truth: np.ndarray = held_y) -> float:
            return round(float((p == truth).mean()), 4)

        row = {
            "shift": f"{name}-{severity}",
            "frozen": acc(predict(edge, held_x, batch_stats=False)),
            "bn": acc(predict(edge, held_x)),
            "teacher": acc(predict(learner.teacher, held_x)),
            "cema_eval_bn": acc(predict(edge, held_x, params, batch_stats=False)),
            "cema_batch_bn": acc(predict(edge, held_x, params)),
            "steps": learner.steps,
            "learner_seconds": round(seconds, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "command": "python tools/cloud_learner_report.py",
        "stream": args.stream,
        "held_out": args.held_out,
        "config": "CemaConfig() defaults (paper): batch 32, replay 96 once 256 stored, lr 2.5e-3 / 2.5e-4",
        "bundle_bytes": bundle_bytes,
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"bundle: {bundle_bytes} bytes")


if __name__ == "__main__":
    main()
