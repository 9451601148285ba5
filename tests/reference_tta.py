"""Plain-torch reference implementations of Tent, EATA and SAR, written from the papers (and the
published defaults) without calling edgetta. The runtime parity tests
(tests/test_runtime_parity.py) run these next to the torch-free runtime on the same stream.

- Tent (Wang et al., ICLR 2021): norm affine parameters only, BatchNorm on batch statistics, loss = mean
  prediction entropy (Eq. 2), one optimiser step per batch; the outputs are the pre-update predictions.
- EATA (Niu et al., ICML 2022): reliable samples H < E0 (Eq. 3), redundancy filter |cos(m, p)| < eps with
  m an EMA (0.9) of the kept samples' mean probabilities (Eq. 6-7), weights 1 / exp(H - E0) without
  gradient (Eq. 8), optional Fisher anchor beta * sum F (theta - theta0)^2 (Eq. 9); no step when no
  sample survives.
- SAR (Niu et al., ICLR 2023): a transcription of the authors' released loop: reliable filter H < E0,
  SAM (Foret et al., ICLR 2021) with e = rho g / ||g||, second forward at theta + e re-filtered, step
  from theta with the second gradient (momentum alone when nothing passes), model recovery on the EMA
  of the second loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AFFINE_NORMS = (*BATCH_NORMS, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def configure_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``model`` ready for test-time adaptation (Tent's recipe).

    Everything is in eval mode (dropout off) and frozen; BatchNorm layers normalise with the statistics
    of the current batch (running statistics dropped, so nothing is tracked); the affine parameters of
    every normalisation layer require gradients. ``dtype``: float32 (as the runtime) or float64.
    """
    model = copy.deepcopy(model).to(dtype)
    model.eval()
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, BATCH_NORMS):
            module.train()
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
        if isinstance(module, AFFINE_NORMS):
            for param in (module.weight, module.bias):
                if param is not None:
                    param.requires_grad_(True)
    return model


def collect_params(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    """Norm affine parameters keyed by their state_dict name (``layer1.0.bn1.weight``), in module order.

    ``names``: restrict to these parameters (e.g. SAR skipping the top block); the others are frozen.
    """
    params: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, AFFINE_NORMS):
            continue
        for kind in ("weight", "bias"):
            param = getattr(module, kind)
            if param is None:
                continue
            key = f"{module_name}.{kind}" if module_name else kind
            if names is None or key in names:
                params[key] = param
            else:
                param.requires_grad_(False)
    if names is not None:
        missing = sorted(set(names) - set(params))
        if missing:
            raise KeyError(f"no norm affine parameter named {', '.join(missing)}")
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H = -sum_c p_c log p_c of softmax(logits) [B, C] -> [B] (Tent Eq. 1)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def make_optimizer(
    params: Iterable[nn.Parameter], name: str = "sgd", lr: float = 1e-2, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """torch.optim.SGD with momentum (Tent/EATA/SAR's ImageNet setting) or Adam (their CIFAR setting)."""
    if name == "sgd":
        return torch.optim.SGD(list(params), lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(list(params), lr=lr, betas=(0.9, 0.999))
    raise ValueError(f"unknown optimizer {name!r}")


class ReferenceTTA:
    """Shared state: the configured model, its trainable parameters and the optimiser."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: str = "sgd",
        lr: float = 1e-2,
        momentum: float = 0.9,
        names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = configure_model(model, dtype)
        self.params = collect_params(self.model, names)
        self.optimizer = make_optimizer(self.params.values(), optimizer, lr, momentum)
        self.updates = 0

    def params_numpy(self) -> dict[str, np.ndarray]:
        return {k: p.detach().cpu().numpy().copy() for k, p in self.params.items()}

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Predict on ``x`` (logits before this batch's update) and adapt once."""
        raise NotImplementedError

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1


class TentReference(ReferenceTTA):
    """Tent: one step of mean-entropy minimisation per batch."""

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self._step(softmax_entropy(logits).mean(0))
        return logits.detach()


def fisher_diagonal(
    model: nn.Module,
    calib: torch.Tensor,
    batch_size: int = 64,
    names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """EATA's diagonal Fisher (Eq. 9): mean over calibration batches of the squared gradient of the
    batch-mean cross-entropy against the model's own argmax pseudo-labels, with batch statistics."""
    net = configure_model(model, dtype)
    calib = calib.to(dtype)
    params = collect_params(net, names)
    totals = {k: torch.zeros_like(p) for k, p in params.items()}
    batches = 0
    for start in range(0, calib.shape[0], batch_size):
        x = calib[start : start + batch_size]
        for p in params.values():
            p.grad = None
        logits = net(x)
        F.cross_entropy(logits, logits.argmax(1)).backward()
        for k, p in params.items():
            totals[k] += p.grad.detach() ** 2
        batches += 1
    return {k: v / batches for k, v in totals.items()}


class EataReference(ReferenceTTA):
    """EATA: confidence-weighted entropy minimisation on reliable, non-redundant samples."""

    def __init__(
        self,
        model: nn.Module,
        e0: float,
        eps: float = 0.05,
        ema: float = 0.9,
        fisher: dict[str, torch.Tensor] | None = None,
        beta: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        self.e0, self.eps, self.ema = float(e0), float(eps), float(ema)
        self.m: torch.Tensor | None = None  # moving average of the kept samples' mean prediction
        self.fisher = fisher or {}
        self.anchor = {k: self.params[k].detach().clone() for k in self.fisher}
        self.beta = float(beta)
        self.reliable: list[int] = []
        self.kept: list[int] = []

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        ent = softmax_entropy(logits)
        reliable = torch.where(ent < self.e0)[0]
        probs = logits[reliable].detach().softmax(1)
        if self.m is not None and reliable.numel():
            cos = F.cosine_similarity(self.m.unsqueeze(0), probs, dim=1)
            distinct = torch.where(cos.abs() < self.eps)[0]
        else:
            distinct = torch.arange(reliable.numel())
        kept = reliable[distinct]
        if kept.numel():
            mean = probs[distinct].mean(0)
            self.m = mean if self.m is None else self.ema * self.m + (1.0 - self.ema) * mean
        self.reliable.append(int(reliable.numel()))
        self.kept.append(int(kept.numel()))
        if kept.numel():
            weight = 1.0 / torch.exp(ent[kept].detach() - self.e0)
            loss = (ent[kept] * weight).mean(0)
            for k, f in self.fisher.items():
                loss = loss + self.beta * (f * (self.params[k] - self.anchor[k]) ** 2).sum()
            self._step(loss)
        return logits.detach()


class SarReference(ReferenceTTA):
    """SAR as the authors released it (``forward_and_adapt_sar`` with their SAM wrapper around SGD).

    Per batch: mean entropy of the samples with H < E0 at theta, backward (an empty selection gives zero
    gradients: the mean of nothing is NaN, its gradient is zero); climb to theta + rho g / (||g|| + 1e-12);
    forward there, keep the first filter's samples whose entropy is still < E0, and the mean entropy over
    them is the second loss; unless it is NaN, ema <- 0.9 ema + 0.1 loss (ema = loss the first time);
    backward, return to theta and step the base SGD (always, so momentum alone moves the weights when no
    sample passes). Then, every batch, ema < ``reset_below`` resets the model to the source; the SGD
    momentum survives (the released reset reloads only the wrapper's state) and so does the EMA (the
    released ``SAR.forward`` assigns it back after the reset cleared it).
    """

    def __init__(self, model: nn.Module, e0: float, rho: float = 0.05, reset_below: float = 0.2, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.e0, self.rho, self.reset_below = float(e0), float(rho), float(reset_below)
        self.source = {k: p.detach().clone() for k, p in self.params.items()}
        self.ema: float | None = None
        self.reliable: list[int] = []
        self.kept: list[int] = []
        self.resets: list[int] = []  # batch indices (from 0) after which the model was reset
        self.batches = 0

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        params = list(self.params.values())
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        ent = softmax_entropy(logits)
        ids1 = torch.where(ent < self.e0)[0]
        self.reliable.append(int(ids1.numel()))
        ent[ids1].mean(0).backward()
        # SAM first step: theta + rho g / ||g|| (||g|| over every parameter that has a gradient).
        grad_norm = torch.norm(torch.stack([p.grad.norm(2) for p in params if p.grad is not None]), 2)
        scale = self.rho / (grad_norm + 1e-12)
        origin = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad * scale)
        self.optimizer.zero_grad(set_to_none=True)
        ent2 = softmax_entropy(self.model(x))[ids1]
        ids2 = torch.where(ent2 < self.e0)[0]
        self.kept.append(int(ids2.numel()))
        loss2 = ent2[ids2].mean(0)
        if not math.isnan(loss2.item()):
            self.ema = loss2.item() if self.ema is None else 0.9 * self.ema + 0.1 * loss2.item()
        loss2.backward()
        with torch.no_grad():
            for p, p0 in zip(params, origin):
                p.copy_(p0)
        # SAM second step: the base SGD steps from theta with the gradient taken at theta + e.
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.ema is not None and self.ema < self.reset_below:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.source[k])
            self.resets.append(self.batches)
        self.batches += 1
        return logits.detach()
