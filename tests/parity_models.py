"""Models and streams shared by the torch-reference parity tests (runtime, SAR as published, DeYO, FOA).

``PrototypeTask``: ten random prototype images, a sample is its class prototype times a random amplitude
plus noise; ``linear_probe_resnet_bn``: the resnet_bn family with source BatchNorm statistics and a
closed-form ridge-regression head (confident, diverse predictions whose entropies straddle 0.4 ln C);
``export_probe``: that model exported once, with a calibration set (Fisher).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.conftest import make_family_model

NUM_CLASSES = 10
BATCHES, BATCH = 20, 32


class PrototypeTask:
    """Ten random prototype images; a sample is its class prototype times a random amplitude plus noise."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.shape = tuple(shape[1:])
        self.rng = np.random.default_rng(seed)
        self.protos = self.rng.normal(size=(NUM_CLASSES, *self.shape)).astype(np.float32)

    def sample(self, n: int, sigma: float, amp: tuple[float, float], rng: np.random.Generator):
        labels = rng.integers(0, NUM_CLASSES, size=n)
        scale = rng.uniform(*amp, size=(n,) + (1,) * len(self.shape))
        x = self.protos[labels] * scale + sigma * rng.normal(size=(n, *self.shape))
        return x.astype(np.float32), labels

    def stream(self, seed: int, batches: int = BATCHES, batch: int = BATCH) -> list[np.ndarray]:
        """The test stream: a shifted domain (more noise, weaker signal) with a per-batch contrast and offset,
        so entropies vary within and across batches."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(batches):
            x, _ = self.sample(batch, sigma=2.0, amp=(0.3, 1.5), rng=rng)
            out.append((x * (1.0 + 0.3 * rng.normal()) + 0.5 * rng.normal()).astype(np.float32))
        return out


def linear_probe_resnet_bn(task: PrototypeTask, scale: float = 8.0):
    """make_family_model("resnet_bn") with BatchNorm statistics of the source domain and a ridge-regression
    head on its pooled features (a few forwards instead of training), logits scaled so that about half of
    the test stream lies below E0 (``scale`` = 8: the logits' temperature)."""
    model, _ = make_family_model("resnet_bn")
    x, y = task.sample(256, sigma=1.0, amp=(0.5, 1.5), rng=task.rng)
    feats: dict[str, torch.Tensor] = {}
    hook = model.fc.register_forward_hook(lambda _m, inputs, _o: feats.__setitem__("f", inputs[0]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the running statistics become this batch's
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    model.eval()
    hook.remove()
    f = feats["f"].double()
    mu, sd = f.mean(0), f.std(0) + 1e-6
    z = torch.cat([(f - mu) / sd, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    targets = 2.0 * torch.nn.functional.one_hot(torch.from_numpy(y), NUM_CLASSES).double() - 1.0
    w = torch.linalg.solve(z.T @ z + torch.eye(z.shape[1], dtype=f.dtype), z.T @ targets)
    with torch.no_grad():
        model.fc.weight.copy_((scale * w[:-1] / sd[:, None]).T.float())
        model.fc.bias.copy_((scale * (w[-1] - (mu / sd) @ w[:-1])).float())
    return model


@dataclass
class Probed:
    model: torch.nn.Module
    path: Path
    calib: np.ndarray
    task: PrototypeTask


def export_probe(out: Path, size: int = 32, scale: float = 8.0, **export_args) -> Probed:
    """The linear-probe resnet_bn (logit ``scale``) on ``size`` x ``size`` images, exported with 128
    source-domain calibration samples (Fisher); ``export_args`` go to ``export_model``."""
    from edgetta.export import export_model

    task = PrototypeTask((1, 3, size, size), seed=0)
    model = linear_probe_resnet_bn(task, scale)
    calib, _ = task.sample(128, sigma=1.0, amp=(0.5, 1.5), rng=np.random.default_rng(11))
    torch.manual_seed(1)
    export_args = {"calib": calib, "calib_batch_size": 64, "verify": False, **export_args}
    export_model(model, torch.randn(4, 3, size, size), out, **export_args)
    return Probed(model, out, calib, task)
