"""Train the DEMO teacher of the cloud learner: the bundled edge model fine-tuned with validation corruptions.

A demo stand-in for CEMA's foundation model, small enough to train in a few minutes on two CPU cores: the edge
model of ``edgetta/assets/fmnist_resnet_bn`` (weights rebuilt from the artifact) trained further on clean
Fashion-MNIST training images, each randomly cropped/flipped and, with probability 2/3, corrupted by one of
the held-out validation corruptions of ImageNet-C (speckle noise, Gaussian blur) at a random strength. None of
the 15 test corruptions is used. It is stronger than the edge model on noise and blur shifts; on others (fog,
contrast) it need not be. Writes a safetensors state_dict and a JSON sidecar with per-corruption accuracy::

    nice -n 10 python tools/train_teacher.py --out edgetta/assets/fmnist_teacher.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tools"))

from train_fmnist import augment  # noqa: E402

from edgetta.cloud.demo import fmnist_student  # noqa: E402
from edgetta.cloud.student import build_student  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.data.corruptions import corrupt  # noqa: E402
from edgetta.data.fashion_mnist import MEAN, STD, load_fashion_mnist, to_model_input  # noqa: E402

EDGE_ARTIFACT = ROOT / "edgetta" / "assets" / "fmnist_resnet_bn"
# Test corruptions the report evaluates on (never trained on).
EVAL = [("gaussian_noise", 5), ("shot_noise", 5), ("impulse_noise", 5), ("defocus_blur", 5), ("motion_blur", 5)]
EVAL += [("zoom_blur", 5), ("pixelate", 5), ("fog", 4), ("contrast", 4), ("jpeg_compression", 5)]


def speckle(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative Gaussian noise x + x * N(0, c^2), c ~ U(0.05, 0.6) per image (ImageNet-C speckle noise)."""
    c = 0.05 + 0.55 * torch.rand(pixels.shape[0], 1, 1, 1, generator=generator)
    return pixels + pixels * torch.randn(pixels.shape, generator=generator) * c


def gaussian_blur(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with sigma ~ U(0.4, 1.6) px per image (ImageNet-C's validation blur)."""
    sigma = 0.4 + 1.2 * torch.rand(pixels.shape[0], generator=generator)
    r = torch.arange(-4, 5, dtype=torch.float32)
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [n, 9]
    n, _, h, w = pixels.shape
    x = F.pad(pixels.reshape(1, n, h, w), (4, 4, 4, 4), mode="reflect")
    x = F.conv2d(x, k.reshape(n, 1, 1, 9), groups=n)
    x = F.conv2d(x, k.reshape(n, 1, 9, 1), groups=n)
    return x.reshape(n, 1, h, w)


def corrupt_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Model-ready batch -> a third clean, a third speckle noise, a third Gaussian blur (then re-normalised)."""
    pixels = x * STD + MEAN
    choice = torch.randint(0, 3, (x.shape[0],), generator=generator)
    out = pixels.clone()
    for kind, fn in ((1, speckle), (2, gaussian_blur)):
        idx = torch.nonzero(choice == kind).flatten()
        if len(idx):
            out[idx] = fn(pixels[idx], generator)
    return (out.clamp(0, 1) - MEAN) / STD


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_stats: bool, batch: int = 64) -> float:
    """Top-1 accuracy; ``batch_stats``: BatchNorm normalises with each batch's statistics (as CEMA runs)."""
    model.eval()
    if batch_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(torch.from_numpy(x[i : i + batch])).argmax(1).numpy() == y[i : i + batch]).sum())
    model.load_state_dict(state)  # train-mode BN updated the running statistics: put them back
    model.eval()
    return correct / len(x)


def evaluate(models: dict[str, nn.Module], per_domain: int, seed: int) -> dict[str, dict[str, float]]:
    """Accuracy of each model (eval-mode and batch-statistics BN) on test corruptions."""
    images, labels = load_fashion_mnist("test")
    pick = np.random.default_rng(seed).permutation(len(images))[:per_domain]
    images, labels = images[pick], labels[pick]
    report: dict[str, dict[str, float]] = {}
    for name, severity in [("clean", 0), *EVAL]:
        raw = images if severity == 0 else corrupt(images, name, severity, seed=seed)
        x = to_model_input(raw)
        key = f"{name}-{severity}" if severity else name
        report[key] = {
            f"{m}/{mode}": round(accuracy(model, x, labels, mode == "batch"), 4)
            for m, model in models.items()
            for mode in ("eval", "batch")
        }
    return report


def train(model: nn.Module, samples: int, epochs: int, lr: float, batch_size: int, seed: int) -> float:
    """Fine-tune all weights with AdamW and a cosine schedule; returns seconds."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_fashion_mnist("train")
    pick = np.random.default_rng(seed).permutation(len(images))[:samples]
    x_train = torch.from_numpy(to_model_input(images[pick]))
    y_train = torch.from_numpy(labels[pick].astype(np.int64))
    steps = epochs * math.ceil(len(x_train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = corrupt_batch(augment(x_train[idx], generator), generator)
            loss = F.cross_entropy(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="safetensors state_dict; JSON sidecar alongside")
    parser.add_argument("--samples", type=int, default=20000, help="training images used")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-per-domain", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy shared cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from safetensors.torch import save_file

    artifact = load_artifact(EDGE_ARTIFACT)
    edge = build_student(fmnist_student(), artifact)
    teacher = build_student(fmnist_student(), artifact)
    seconds = train(teacher, args.samples, args.epochs, args.lr, args.batch_size, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(args.out))
    report = evaluate({"edge": edge, "teacher": teacher}, args.eval_per_domain, args.seed + 1)
    record: dict[str, Any] = {
        "what": "DEMO teacher: the bundled edge model fine-tuned with speckle noise and Gaussian blur",
        "spec": "edgetta.cloud.demo:fmnist_teacher",
        "init": "edgetta/assets/fmnist_resnet_bn (weights rebuilt from the artifact)",
        "augmentation": "random crop (pad 2) + flip; 1/3 clean, 1/3 speckle c~U(0.05,0.6), 1/3 blur s~U(0.4,1.6)",
        "samples": args.samples,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "accuracy": report,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    for key, row in report.items():
        print(f"{key:20s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    print(f"trained in {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
