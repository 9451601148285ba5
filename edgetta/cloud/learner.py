"""CEMA's cloud learner (Chen et al., "Towards Robust and Efficient Cloud-Edge Elastic Model Adaptation via
Selective Entropy Distillation", ICLR 2024), on CPU.

For every batch of ``batch_size`` uploaded samples:

1. the foundation (teacher) model adapts its norm affine parameters by weighted entropy minimisation,
   ``L_T = mean_i w(H_T,i) H_T,i`` with ``w(H) = 1 / exp(H - E_max)`` and ``E_max = 0.4 ln C`` (paper Sec. 3.2);
2. the edge model's copy (student) adapts only its norm affine parameters by the distillation loss
   (paper Eq. 6, with the authors' released weights alpha = 3, beta = 3, gamma = 1 and temperature T = 1)::

       L_S = alpha * mean_i w(H_S,i) H_S,i
           + beta  * mean_i w(H_T,i) KL(p_T,i || p_S,i) T^2
           + gamma * mean_i w(H_T,i) CE(p_S,i, argmax p_T,i)

   on the new batch, plus ``3 * batch_size`` samples from a replay buffer of the last ``replay_size`` uploads
   once it holds ``replay_start``; an upload that completes no batch triggers a step on ``4 * batch_size``
   replayed samples instead.

Both models normalise BatchNorm inputs with the batch's statistics (as in the paper's code); the student also
tracks running statistics of the uploads, which a bundle carries with the affine parameters so that a device
running eval-mode BatchNorm sees the same normalisation. Defaults: SGD with momentum 0.9, teacher lr 2.5e-4,
student lr 2.5e-3 (paper Appendix B).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetta.contract import Artifact
from edgetta.errors import ConfigError

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class CemaConfig:
    """Hyper-parameters; the defaults are the paper's."""

    batch_size: int = 32
    replay_size: int = 10_000
    replay_start: int = 256
    teacher_lr: float = 2.5e-4
    student_lr: float = 2.5e-3
    momentum: float = 0.9
    e_max_ratio: float = 0.4  # E_max = e_max_ratio * ln C
    alpha: float = 3.0  # weighted entropy of the student
    beta: float = 3.0  # KL(teacher || student)
    gamma: float = 1.0  # cross-entropy on the teacher's argmax
    temperature: float = 1.0
    send_stats: bool = True  # bundles carry the student's BatchNorm running statistics too
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "replay_size", "replay_start"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CEMA {name} must be >= 1, got {getattr(self, name)}")
        if self.replay_start > self.replay_size:
            raise ConfigError(f"CEMA replay_start {self.replay_start} exceeds replay_size {self.replay_size}")
        for name in ("teacher_lr", "student_lr", "temperature"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"CEMA {name} must be >= 0, got {getattr(self, name)}")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of softmax(logits), in nats."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def sample_weight(ent: torch.Tensor, e_max: float) -> torch.Tensor:
    """CEMA's sample weight ``1 / exp(H - E_max)`` (no gradient through it)."""
    return torch.exp(e_max - ent.detach())


def teacher_loss(logits: torch.Tensor, e_max: float) -> torch.Tensor:
    """The foundation model's weighted entropy ``mean_i w(H_i) H_i``."""
    ent = entropy(logits)
    return (sample_weight(ent, e_max) * ent).mean()


def cema_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    e_max: float,
    alpha: float = 3.0,
    beta: float = 3.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CEMA's distillation loss (paper Eq. 6) of student logits against (detached) teacher logits; returns the
    total and its three terms (before weighting by alpha, beta, gamma)."""
    teacher = teacher.detach()
    ent_s = entropy(student)
    w_t = sample_weight(entropy(teacher), e_max)
    ent_term = (sample_weight(ent_s, e_max) * ent_s).mean()
    log_p_s = F.log_softmax(student / temperature, 1)
    p_t = F.softmax(teacher / temperature, 1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_p_s)).sum(1) * temperature**2
    kl_term = (w_t * kl).mean()
    ce_term = (w_t * F.cross_entropy(student, teacher.argmax(1), reduction="none")).mean()
    total = alpha * ent_term + beta * kl_term + gamma * ce_term
    parts = {"entropy": ent_term, "kl": kl_term, "ce": ce_term, "total": total}
    return total, {k: float(v.detach()) for k, v in parts.items()}


def norm_affine(model: nn.Module) -> dict[str, nn.Parameter]:
    """The affine parameters of every normalisation layer, by ``state_dict`` name."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _NORMS):
            for name, param in module.named_parameters(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = param
    return out


def _prepare(model: nn.Module, trainable: Mapping[str, nn.Parameter], batch_stats_only: bool) -> None:
    """Train mode (batch statistics), dropout off, gradients only for ``trainable``."""
    model.train()
    model.requires_grad_(False)
    for param in trainable.values():
        param.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            module.eval()
        if batch_stats_only and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


class ReplayBuffer:
    """The last ``capacity`` uploaded samples (a ring), sampled uniformly without replacement."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity = capacity
        self.rng = rng
        self._data: np.ndarray | None = None
        self._next = 0
        self.size = 0

    def add(self, x: np.ndarray) -> None:
        if self._data is None:
            self._data = np.empty((self.capacity, *x.shape[1:]), np.float32)
        for row in x[-self.capacity :]:
            self._data[self._next] = row
            self._next = (self._next + 1) % self.capacity
        self.size = min(self.capacity, self.size + len(x))

    def sample(self, n: int) -> np.ndarray:
        return self._data[self.rng.choice(self.size, size=min(n, self.size), replace=False)]


class CemaLearner:
    """The cloud side of CEMA for one edge artifact: a teacher adapted by weighted entropy, distilled into
    the student's norm affine parameters (see the module docstring). Implements the service's Learner."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        artifact: Artifact,
        config: CemaConfig | None = None,
        resume: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.config = config or CemaConfig()
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.e_max = cfg.e_max_ratio * math.log(artifact.num_classes)
        self.teacher = teacher
        self.student = student
        affine = norm_affine(student)
        self.trainable = {name: affine[name] for name in artifact.trainable_names if name in affine}
        if not self.trainable:
            raise ConfigError("the student has none of the artifact's trainable norm parameters: check --student")
        self.stats = {}
        if cfg.send_stats:
            buffers = dict(student.named_buffers())
            for layer in artifact.norm_layers:
                for name in (layer.running_mean, layer.running_var):
                    if name and name in buffers:
                        self.stats[name] = buffers[name]
        if resume:
            self._load(resume)
        _prepare(teacher, norm_affine(teacher), batch_stats_only=True)
        _prepare(student, self.trainable, batch_stats_only=False)
        self.teacher_opt = torch.optim.SGD(
            [p for p in teacher.parameters() if p.requires_grad], lr=cfg.teacher_lr, momentum=cfg.momentum
        )
        self.student_opt = torch.optim.SGD(list(self.trainable.values()), lr=cfg.student_lr, momentum=cfg.momentum)
        self.replay = ReplayBuffer(cfg.replay_size, np.random.default_rng(cfg.seed))
        self._pending: list[np.ndarray] = []
        self.steps = 0
        self.last_losses: dict[str, float] = {}

    def _load(self, params: Mapping[str, np.ndarray]) -> None:
        """Start from a published bundle's tensors (a restarted server continues where it stopped)."""
        targets = {**self.trainable, **self.stats}
        with torch.no_grad():
            for name, value in params.items():
                if name in targets and tuple(targets[name].shape) == value.shape:
                    targets[name].copy_(torch.from_numpy(np.asarray(value)))

    @property
    def pending(self) -> int:
        return sum(len(x) for x in self._pending)

    def add(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._pending.append(x)
        self.replay.add(x)

    def _take(self, n: int) -> np.ndarray:
        data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = [data[n:]] if len(data) > n else []
        return data[:n]

    def _distill(self, x: torch.Tensor) -> None:
        cfg = self.config
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss, parts = cema_loss(
            self.student(x), teacher_logits, self.e_max, cfg.alpha, cfg.beta, cfg.gamma, cfg.temperature
        )
        self.student_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.student_opt.step()
        self.last_losses = parts
        self.steps += 1

    def step(self) -> bool:
        """One CEMA step on ``batch_size`` new samples; False (nothing done) when fewer are pending."""
        cfg = self.config
        if self.pending < cfg.batch_size:
            return False
        new = torch.from_numpy(self._take(cfg.batch_size))
        loss = teacher_loss(self.teacher(new), self.e_max)
        self.teacher_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.teacher_opt.step()
        if self.replay.size >= cfg.replay_start:
            new = torch.cat([new, torch.from_numpy(self.replay.sample(3 * cfg.batch_size))])
        self._distill(new)
        return True

    def replay_step(self) -> bool:
        """A distillation step on ``4 * batch_size`` replayed samples (no new batch); False before the
        buffer holds more than ``replay_start``."""
        if self.replay.size <= self.config.replay_start:
            return False
        self._distill(torch.from_numpy(self.replay.sample(4 * self.config.batch_size)))
        return True

    def params(self) -> dict[str, np.ndarray]:
        """The student's trainable norm affine parameters (and running statistics), as float32 copies."""
        tensors = {**self.trainable, **self.stats}
        return {name: t.detach().numpy().astype(np.float32, copy=True) for name, t in tensors.items()}
