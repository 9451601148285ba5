"""Train a source model on clean Fashion-MNIST (train split) and evaluate it on the clean test split.

Writes a torch ``state_dict`` (``--out``) and a JSON sidecar next to it (same stem, ``.json``) with the
model family, constructor kwargs, clean test accuracy, epochs and training time. Example::

    python tools/train_fmnist.py --model resnet_bn --epochs 4 --out models/fmnist_resnet_bn.pt
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgetta.data.fashion_mnist import MEAN, STD, load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.zoo.models import FAMILIES  # noqa: E402

# Constructor kwargs per model family for 28x28 greyscale inputs.
CONFIGS: dict[str, dict[str, Any]] = {
    "resnet_bn": {"in_channels": 1, "num_classes": 10, "width": 16, "blocks": 1},
    "resnet_gn": {"in_channels": 1, "num_classes": 10, "width": 16, "blocks": 1},
    "tiny_vit": {"image_size": 28, "patch": 7, "in_channels": 1, "num_classes": 10, "dim": 64, "depth": 4, "heads": 4},
}


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with ``pad`` pixels of padding and random horizontal flip, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(-MEAN / STD))  # pad with normalised black
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = oy[:, None] + torch.arange(h)[None, :]
    cols = ox[:, None] + torch.arange(w)[None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    model_name: str, epochs: int, data_root: str | None, limit: int | None, seed: int, batch_size: int, lr: float
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model_name`` with AdamW and a one-cycle cosine schedule; return the model and its record."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = load_fashion_mnist("train", data_root)
    test_images, test_labels = load_fashion_mnist("test", data_root)
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    x_train = torch.from_numpy(to_model_input(train_images))
    y_train = torch.from_numpy(train_labels)
    x_test = torch.from_numpy(to_model_input(test_images))
    y_test = torch.from_numpy(test_labels)

    kwargs = CONFIGS[model_name]
    model = FAMILIES[model_name](**kwargs)
    params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if model_name == "tiny_vit" else 5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = augment(x_train[idx], generator)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1 if model_name == "tiny_vit" else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        print(f"epoch {epoch + 1}/{epochs} loss {total / seen:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, x_test, y_test)
    record = {
        "model": model_name,
        "kwargs": kwargs,
        "dataset": "fashion-mnist",
        "normalisation": {"mean": MEAN, "std": STD},
        "clean_test_accuracy": accuracy,
        "epochs": epochs,
        "train_samples": len(x_train),
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "parameters": params,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    return model, record


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="state_dict path (.pt); JSON sidecar alongside")
    parser.add_argument("--data-root", default=None, help="directory with the Fashion-MNIST IDX files")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default per model)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    lr = args.lr if args.lr is not None else (2e-3 if args.model == "tiny_vit" else 3e-3)
    model, record = train(args.model, args.epochs, args.data_root, args.limit, args.seed, args.batch_size, lr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{args.model}: clean test accuracy {record['clean_test_accuracy']:.4f} in {record['seconds']} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
