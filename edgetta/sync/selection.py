"""CEMA's sample selection on the edge: which predictions are worth uploading to the cloud.

Chen et al., "Towards Robust and Efficient Cloud-Edge Elastic Model Adaptation via Selective Entropy
Distillation" (CEMA, ICLR 2024), Sec. 3.2. A sample x with prediction entropy H(x) (nats) is uploaded iff

    S(x) = 1[H(x) < E_max(t)] * 1[H(x) > E_min] * 1[|cos(m, p(x))| < eps]

- dynamic unreliable exclusion: E_max(t) = e_max * ln C * lambda * (mean H over all samples seen so far /
  mean H over the first ``warmup`` samples), and the static e_max * ln C until ``warmup`` samples were seen.
  Defaults as published: e_max = 0.4, lambda = 0.6. The running mean includes the batch being judged
  (as in the authors' release), so a harder domain raises the threshold and an easier one lowers it.
- low-informative exclusion: E_min = e_min * ln C (e_min = 0.02): near-certain predictions teach the cloud
  nothing. Optionally also EATA's redundancy filter (Niu et al., ICML 2022, Eq. 6-7) with ``eps``: a sample
  whose probability vector is nearly parallel to the running mean prediction m is redundant. ``eps`` is off by
  default: the published 0.05 is for ImageNet's 1,000 classes and would exclude almost everything of a
  10-class model (EATA uses 0.4 there).

Counts of seen / selected / excluded by reason are kept; :meth:`CemaSelector.state` is plain JSON so the
selector resumes where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetta.kernels.redundancy import RedundancyFilter

UNRELIABLE = "unreliable"
LOW_INFORMATIVE = "low_informative"
REDUNDANT = "redundant"
NON_FINITE = "non_finite"
REASONS = (UNRELIABLE, LOW_INFORMATIVE, REDUNDANT, NON_FINITE)


@dataclass(frozen=True)
class SelectionConfig:
    """The rule's constants (fractions of ln C) and the warm-up length in samples."""

    e_max: float = 0.4
    lam: float = 0.6
    e_min: float = 0.02
    warmup: int = 512
    eps: float | None = None
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.e_max <= 1.0:
            raise ValueError(f"e_max must lie in (0, 1] (a fraction of ln C), got {self.e_max}")
        if not 0.0 <= self.e_min < self.e_max:
            raise ValueError(f"e_min must lie in [0, e_max), got {self.e_min}")
        if self.lam <= 0.0:
            raise ValueError(f"lambda must be positive, got {self.lam}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1 sample, got {self.warmup}")


@dataclass
class Decision:
    """One batch's verdict: ``keep`` [B] and the reason of every excluded row (None when kept)."""

    keep: np.ndarray
    reasons: list[str | None]
    threshold: float
    counts: dict[str, int] = field(default_factory=dict)


def entropy_from_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities [B, C] and entropy [B] in nats (float64) of ``logits`` [B, C]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    return p, h


class CemaSelector:
    """Stateful CEMA selection over a stream of batches of one C-class model."""

    def __init__(self, num_classes: int, config: SelectionConfig | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"selection needs at least 2 classes, got {num_classes}")
        self.config = config or SelectionConfig()
        self.num_classes = int(num_classes)
        self.ln_c = math.log(self.num_classes)
        self.n = 0  # samples seen (finite entropy)
        self.total = 0.0  # their summed entropy
        self.warm_mean: float | None = None  # mean entropy over the first ``warmup`` samples, once known
        self.redundancy = None if self.config.eps is None else RedundancyFilter(self.config.eps, self.config.momentum)
        self.seen = 0
        self.selected = 0
        self.excluded: dict[str, int] = dict.fromkeys(REASONS, 0)

    @property
    def e_min(self) -> float:
        return self.config.e_min * self.ln_c

    def threshold(self) -> float:
        """E_max(t) in nats, from what has been seen so far."""
        static = self.config.e_max * self.ln_c
        if self.warm_mean is None or self.warm_mean <= 0.0 or self.n == 0:
            return static
        return static * self.config.lam * (self.total / self.n) / self.warm_mean

    def _observe(self, h: np.ndarray) -> None:
        """Add a batch to the running mean; the warm-up mean is fixed once ``warmup`` samples were seen."""
        self.n += h.size
        self.total += float(h.sum())
        if self.warm_mean is None and self.n >= self.config.warmup:
            self.warm_mean = self.total / self.n

    def select(self, logits: np.ndarray | None = None, *, entropy: np.ndarray | None = None) -> Decision:
        """Judge one batch given its ``logits`` [B, C] (or only its ``entropy`` [B] when no redundancy filter)."""
        if logits is not None:
            probs, h = entropy_from_logits(logits)
        elif entropy is not None:
            if self.redundancy is not None:
                raise ValueError("the redundancy filter needs logits, not only entropies")
            probs, h = None, np.asarray(entropy, dtype=np.float64).reshape(-1)
        else:
            raise ValueError("select() needs logits or entropy")
        finite = np.isfinite(h)
        self._observe(h[finite])
        e_max = self.threshold()
        reasons: list[str | None] = [None] * h.size
        keep = np.zeros(h.size, dtype=bool)
        for i in range(h.size):
            if not finite[i]:
                reasons[i] = NON_FINITE
            elif not h[i] < e_max:
                reasons[i] = UNRELIABLE
            elif not h[i] > self.e_min:
                reasons[i] = LOW_INFORMATIVE
            else:
                keep[i] = True
        if self.redundancy is not None and probs is not None and keep.any():
            idx = np.flatnonzero(keep)
            distinct = self.redundancy.mask(probs[idx])
            for i in idx[~distinct]:
                keep[i] = False
                reasons[i] = REDUNDANT
            self.redundancy.update(probs[idx[distinct]])
        counts = dict.fromkeys(REASONS, 0)
        for r in reasons:
            if r is not None:
                counts[r] += 1
                self.excluded[r] += 1
        self.seen += h.size
        self.selected += int(keep.sum())
        return Decision(keep, reasons, e_max, counts)

    def counts(self) -> dict[str, int]:
        """{"seen", "selected", "excluded_<reason>"...} since the selector started (or was restored)."""
        out = {"seen": self.seen, "selected": self.selected}
        out.update({f"excluded_{r}": v for r, v in self.excluded.items()})
        return out

    def state(self) -> dict[str, Any]:
        """JSON-able state: running entropy, warm-up mean, redundancy mean and counts."""
        m = None
        if self.redundancy is not None and self.redundancy.m is not None:
            m = [float(v) for v in self.redundancy.m]
        return {
            "n": self.n,
            "total": self.total,
            "warm_mean": self.warm_mean,
            "m": m,
            "seen": self.seen,
            "selected": self.selected,
            "excluded": dict(self.excluded),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.n = int(state.get("n", 0))
        self.total = float(state.get("total", 0.0))
        warm = state.get("warm_mean")
        self.warm_mean = None if warm is None else float(warm)
        if self.redundancy is not None:
            m = state.get("m")
            self.redundancy.load_state({} if m is None else {"m": np.asarray(m, np.float64)})
        self.seen = int(state.get("seen", 0))
        self.selected = int(state.get("selected", 0))
        self.excluded = dict.fromkeys(REASONS, 0)
        self.excluded.update({k: int(v) for k, v in (state.get("excluded") or {}).items() if k in REASONS})
