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
- CoTTA (Wang et al., CVPR 2022): a transcription of the authors' released loop on the norm affine
  parameters (mean teacher, anchor-gated augmentation averaging, soft cross-entropy, stochastic restore).
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


def shuffle_patches(x: torch.Tensor, grid: int, perms: np.ndarray) -> torch.Tensor:
    """DeYO's patch shuffling in torch (square images whose side is a multiple of ``grid``): cut each image
    into grid x grid patches, output patch j of sample i = input patch perms[i, j], reassemble."""
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    patches = x.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    patches = patches[torch.arange(n).unsqueeze(-1), torch.from_numpy(perms)]
    return patches.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class DeyoReference(ReferenceTTA):
    """DeYO as the authors released it (``forward_and_adapt_deyo``, patch transformation, both filters and
    both reweightings on): entropy filter H < tau_ent; one no-grad forward of the kept samples alone with
    their patches shuffled (BatchNorm on that subset's statistics); PLPD = p_y(x) - p_y(x~) with y the
    argmax on x; keep PLPD > tau_plpd; loss = mean of H * (1/exp(H - e0) + 1/exp(-PLPD)) (coefficients
    detached); step only when a sample is kept. Permutations: argsort of uniform draws from a numpy
    generator seeded with ``seed`` (one draw per batch with a reliable sample), as the runtime draws them.
    """

    def __init__(
        self, model: nn.Module, tau_ent: float, e0: float, tau_plpd: float = 0.2, grid: int = 4, seed: int = 0, **kwargs
    ) -> None:
        super().__init__(model, **kwargs)
        self.tau_ent, self.e0, self.tau_plpd, self.grid = float(tau_ent), float(e0), float(tau_plpd), int(grid)
        self.rng = np.random.default_rng(seed)
        self.reliable: list[int] = []
        self.kept: list[int] = []

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        ent = softmax_entropy(logits)
        ids1 = torch.where(ent < self.tau_ent)[0]
        self.reliable.append(int(ids1.numel()))
        if not ids1.numel():
            self.kept.append(0)
            return logits.detach()
        perms = np.argsort(self.rng.random((ids1.numel(), self.grid * self.grid)), axis=1, kind="stable")
        with torch.no_grad():
            logits_prime = self.model(shuffle_patches(x[ids1].detach(), self.grid, perms))
        probs = logits[ids1].softmax(1)
        cls = probs.argmax(1, keepdim=True)
        plpd = (torch.gather(probs, 1, cls) - torch.gather(logits_prime.softmax(1), 1, cls)).reshape(-1)
        ids2 = torch.where(plpd > self.tau_plpd)[0]
        self.kept.append(int(ids2.numel()))
        if not ids2.numel():
            return logits.detach()
        ent_kept, plpd_kept = ent[ids1][ids2], plpd[ids2].detach()
        coeff = 1.0 / torch.exp(ent_kept.detach() - self.e0) + 1.0 / torch.exp(-plpd_kept)
        self._step(ent_kept.mul(coeff).mean(0))
        return logits.detach()


class FoaReference:
    """FOA's loop (the authors' ``tta_library/foa.py``) on a torch model in eval mode (BatchNorm on running
    statistics), searching a per-layer scale and shift of the BatchNorm affine parameters with CMA-ES
    (``cma``, same options as the runtime): each batch evaluates ``es.ask()`` plus the previous best,
    fitness = summed entropy + lambda (B/64) (squared distance of every BN layer's input batch mean/std to
    its running statistics + of the classifier input's mean/std (N - 1) to the source ones), tells CMA-ES
    all of them, predicts with the best candidate's head(f + mu_S - h), h an EMA (0.9) of the candidates'
    mean features before this batch. The head is the model's own ``fc`` layer.
    """

    def __init__(
        self, model: nn.Module, calib: torch.Tensor, lam: float = 0.4, sigma0: float = 0.1, seed: int = 2020
    ) -> None:
        import cma

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.bns = [(n, m) for n, m in self.model.named_modules() if isinstance(m, BATCH_NORMS)]
        self.source = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in self.bns}
        self.spread = {n: float(w.abs().mean()) for n, (w, _) in self.source.items()}
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n, m in self.bns:
            m.register_forward_hook(self._bn_hook(n))
        self.model.fc.register_forward_hook(lambda _m, inputs, _o: self.stats.__setitem__("features", inputs[0]))
        with torch.no_grad():
            self.model(calib)
        f = self.stats["features"].double()
        self.f_std, self.f_mean = torch.std_mean(f, dim=0)
        self.lam = lam
        rng = np.random.default_rng(seed)
        cma_options = {"randn": lambda *shape: rng.standard_normal(shape), "seed": float("nan"), "verbose": -9}
        cma_options["maxiter"] = float("inf")
        self.es = cma.CMAEvolutionStrategy([0.0] * (2 * len(self.bns)), sigma0, inopts=cma_options)
        self.best = np.zeros(2 * len(self.bns))
        self.hist: torch.Tensor | None = None
        self.chosen: list[int] = []

    def _bn_hook(self, name: str):
        def hook(_m, inputs, _o):
            x = inputs[0].double()
            self.stats[name] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))

        return hook

    def _set(self, z: np.ndarray) -> None:
        n = len(self.bns)
        with torch.no_grad():
            for i, (name, m) in enumerate(self.bns):
                w, b = self.source[name]
                m.weight.copy_(w * (1.0 + float(z[i])))
                m.bias.copy_(b + float(z[n + i]) * self.spread[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = None if self.hist is None else self.f_mean - self.hist
        candidates = [np.asarray(z, np.float64) for z in self.es.ask()] + [self.best]
        scores, means, best = [], [], None
        with torch.no_grad():
            for z in candidates:
                self._set(z)
                logits = self.model(x)
                disc = 0.0
                for name, m in self.bns:
                    mu, var = self.stats[name]
                    disc += float(((mu - m.running_mean.double()) ** 2).sum())
                    disc += float(((var.sqrt() - m.running_var.double().sqrt()) ** 2).sum())
                f = self.stats["features"]
                sd, mu = torch.std_mean(f.double(), dim=0)
                disc += float(((sd - self.f_std) ** 2).sum() + ((mu - self.f_mean) ** 2).sum())
                score = float(softmax_entropy(logits).double().sum()) + self.lam * disc * len(x) / 64
                if best is None or score < min(scores):
                    best = (logits, f)
                scores.append(score)
                means.append(mu)
        self.es.tell(candidates, scores)
        self.chosen.append(int(np.argmin(scores)))
        self.best = candidates[self.chosen[-1]].copy()
        logits, f = best
        if shift is not None:
            with torch.no_grad():
                logits = self.model.fc((f.double() + shift).float())
        mean = torch.stack(means).mean(0)
        self.hist = mean if self.hist is None else 0.9 * self.hist + 0.1 * mean
        return logits


class CottaReference(ReferenceTTA):
    """CoTTA as released (``cotta.py`` ``forward_and_adapt``), restricted to the norm affine parameters: the
    student's forward; the anchor (source) model's mean max-probability; when it is below ``ap`` the EMA
    teacher's logits averaged over the augmented batches, else the teacher's plain logits; loss = mean over the
    batch of -sum_c softmax(teacher)_c log softmax(student)_c; one step; teacher <- ema * teacher +
    (1 - ema) * student; stochastic restore: each element back to its source value iff a uniform draw < ``p``.

    ``augment``: numpy batch -> augmented numpy batch (the runtime's augmentations from a replica generator;
    drawn only when the teacher averages, where the released code always draws N and may discard them).
    ``restore_rng``: the numpy generator of the restore masks, one ``random(shape)`` per parameter in order.
    """

    def __init__(
        self,
        model: nn.Module,
        augment,
        n_augmentations: int,
        ema: float = 0.999,
        ap: float = 0.92,
        restore_p: float = 0.0,
        restore_rng: np.random.Generator | None = None,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        self.augment, self.n_augmentations = augment, int(n_augmentations)
        self.ema, self.ap, self.restore_p, self.restore_rng = float(ema), float(ap), float(restore_p), restore_rng
        self.model_ema = copy.deepcopy(self.model).requires_grad_(False)
        self.model_anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.ema_params = dict(self.model_ema.named_parameters())
        self.model_state = {k: p.detach().clone() for k, p in self.params.items()}
        self.augmented = 0

    def teacher_numpy(self) -> dict[str, np.ndarray]:
        return {k: self.ema_params[k].detach().numpy().copy() for k in self.params}

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(x)
        with torch.no_grad():
            anchor_prob = self.model_anchor(x).softmax(1).max(1)[0]
            standard_ema = self.model_ema(x)
            if anchor_prob.mean(0) < self.ap and self.n_augmentations:
                views = [torch.from_numpy(self.augment(x.numpy())) for _ in range(self.n_augmentations)]
                outputs_ema = torch.stack([self.model_ema(v) for v in views]).mean(0)
                self.augmented += 1
            else:
                outputs_ema = standard_ema
        self._step((-(outputs_ema.softmax(1) * outputs.log_softmax(1)).sum(1)).mean(0))
        with torch.no_grad():
            for k, p in self.params.items():
                self.ema_params[k].data[:] = self.ema * self.ema_params[k].data[:] + (1 - self.ema) * p.data[:]
            if self.restore_p > 0:
                for k, p in self.params.items():
                    mask = torch.from_numpy(self.restore_rng.random(tuple(p.shape)) < self.restore_p).to(p.dtype)
                    p.data = self.model_state[k] * mask + p.data * (1.0 - mask)
        return outputs_ema


class StampReference(ReferenceTTA):
    """STAMP's stable memory as the authors released it (``RBM`` and ``STAMP.adapt``), with the
    documented edgetta differences: one view (no augmentations, no source-model agreement check), plain
    SGD instead of SAM, coefficients detached. Reliable H < margin on the pre-update test-batch
    prediction go into per-class FIFO lists under their predicted class; when ``capacity`` is reached,
    pop the oldest entry of a class with the largest size EMA (ties: ``rng.integers`` over the tied
    classes, as the runtime draws them); replaying the memory refreshes the EMA (0.9 / 0.1) and updates on
    mean(H * capacity * e^{-H} / sum e^{-H}) over the memory (BatchNorm on the memory's statistics).
    """

    def __init__(self, model: nn.Module, margin: float, capacity: int = 64, seed: int = 0, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.margin, self.capacity = float(margin), int(capacity)
        self.rng = np.random.default_rng(seed)
        self.data: list[list[torch.Tensor]] | None = None
        self.count: torch.Tensor | None = None
        self.total = 0
        self.memories: list[np.ndarray] = []  # the replayed memory batch, per batch
        self.stored: list[int] = []  # reliable samples stored, per batch

    def _append(self, items: torch.Tensor, labels: torch.Tensor) -> None:
        for item, label in zip(items, labels.tolist()):
            if self.total < self.capacity:
                self.total += 1
            else:
                filled = [c for c in range(len(self.data)) if self.data[c]]
                top = max(float(self.count[c]) for c in filled)
                ties = [c for c in filled if float(self.count[c]) == top]
                self.data[ties[int(self.rng.integers(len(ties)))]].pop(0)
            self.data[label].append(item)

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        if self.data is None:
            self.data = [[] for _ in range(logits.shape[1])]
            self.count = torch.zeros(logits.shape[1])
        ids = torch.where(softmax_entropy(logits) < self.margin)[0]
        self.stored.append(int(ids.numel()))
        self._append(x[ids], logits.argmax(1)[ids])
        if self.total:
            for c in range(len(self.data)):
                self.count[c] = 0.9 * self.count[c] + 0.1 * len(self.data[c])
            data = torch.stack([item for c in self.data for item in c])
            self.memories.append(data.numpy().copy())
            ent = softmax_entropy(self.model(data))
            inv = 1.0 / torch.exp(ent.detach())
            self._step(ent.mul(inv / inv.sum() * self.capacity).mean())
        else:
            self.memories.append(np.zeros((0, *x.shape[1:]), np.float32))
        return logits
