"""Optimisers over dicts of numpy arrays, updating parameters in place.

``SGD`` and ``Adam`` reproduce torch.optim.SGD and torch.optim.Adam (non-amsgrad, coupled L2 weight
decay) update by update: SGD's momentum buffer is the first step's gradient (no dampening on step 1),
Adam uses Kingma & Ba (ICLR 2015, Alg. 1) bias correction with eps added after the bias-corrected
sqrt. Arithmetic runs in each parameter's dtype, as torch does. Step counts are per parameter, so a
parameter that only sometimes receives a gradient is corrected exactly as torch would correct it.
Hyperparameters come from the constructor; ``load_state_dict`` restores moments and step counts only.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

__all__ = ["SGD", "Adam", "Optimizer", "make_optimizer"]


class Optimizer(ABC):
    """Shared mechanics: per-parameter state buffers, step counts, (de)serialisation."""

    name: ClassVar[str]
    buffer_names: ClassVar[tuple[str, ...]]

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self._buffers: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffer_names}
        self._steps: dict[str, int] = {}

    @property
    def lr(self) -> float:
        """Learning rate; may be changed between steps."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"lr must be a finite number >= 0, got {value}")
        self._lr = float(value)

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """JSON-able hyperparameters."""

    @abstractmethod
    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        """Apply one update to ``param`` in place; ``step`` counts from 1."""

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update, in place, every parameter that has an entry in ``grads``."""
        for name, grad in grads.items():
            if name not in params:
                raise KeyError(f"{self.name}: gradient for unknown parameter {name!r}")
            param = params[name]
            if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
                raise TypeError(f"{self.name}: parameter {name!r} must be a floating numpy array")
            g = np.asarray(grad, dtype=param.dtype)
            if g.shape != param.shape:
                raise ValueError(f"{self.name}: gradient shape {g.shape} != parameter shape {param.shape} for {name!r}")
            step = self._steps.get(name, 0) + 1
            self._update(name, param, g, step)
            self._steps[name] = step

    def reset(self) -> None:
        """Forget all moments and step counts (e.g. after a reset to the source parameters)."""
        for per_param in self._buffers.values():
            per_param.clear()
        self._steps.clear()

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors keyed "<buffer>/<param>", JSON-able meta with optimiser name, hparams and step counts)."""
        tensors = {
            f"{buf}/{pname}": arr.copy() for buf, per_param in self._buffers.items() for pname, arr in per_param.items()
        }
        meta = {"optimizer": self.name, "hparams": self.hparams(), "steps": dict(self._steps)}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (replacing the current state)."""
        if meta.get("optimizer") != self.name:
            raise ValueError(f"optimizer state is for {meta.get('optimizer')!r}, not {self.name!r}")
        buffers: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffer_names}
        for key, arr in tensors.items():
            buf, sep, pname = key.partition("/")
            if not sep or buf not in buffers or not pname:
                raise ValueError(f"{self.name}: unexpected optimizer state key {key!r}")
            buffers[buf][pname] = np.array(arr, copy=True)
        steps = {str(k): int(v) for k, v in dict(meta.get("steps", {})).items()}
        self._buffers = buffers
        self._steps = steps


class SGD(Optimizer):
    """torch.optim.SGD: d = g + wd*theta; b = d (step 1) else mu*b + (1-dampening)*d; theta -= lr*(d + mu*b | b)."""

    name = "sgd"
    buffer_names = ("momentum_buffer",)

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if momentum < 0.0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
        super().__init__(lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def hparams(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        d_p = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum:
            bufs = self._buffers["momentum_buffer"]
            buf = bufs.get(name)
            if buf is None:
                buf = bufs[name] = np.array(d_p, copy=True)
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * d_p
            d_p = d_p + self.momentum * buf if self.nesterov else buf
        param -= self.lr * d_p


class Adam(Optimizer):
    """torch.optim.Adam: m, v EMAs of g and g^2; theta -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    name = "adam"
    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
        if eps < 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(lr)
        self.betas = (beta1, beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def hparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        beta1, beta2 = self.betas
        g = grad + self.weight_decay * param if self.weight_decay else grad
        m = self._buffers["exp_avg"].setdefault(name, np.zeros_like(param))
        v = self._buffers["exp_avg_sq"].setdefault(name, np.zeros_like(param))
        m += (1.0 - beta1) * (g - m)  # torch's lerp_(g, 1 - beta1)
        v *= beta2
        v += (1.0 - beta2) * g * g
        step_size = self.lr / (1.0 - beta1**step)
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2**step) + self.eps
        param -= step_size * (m / denom)


_OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """Build an optimiser by name ("sgd" or "adam"); unknown names or arguments raise ValueError."""
    cls = _OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; valid options: {', '.join(sorted(_OPTIMIZERS))}")
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown argument(s) for {cls.name}: {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(**kwargs)
