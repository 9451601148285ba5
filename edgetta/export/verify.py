"""Parity of the exported graphs against a float64 torch reference of the ORIGINAL model.

bn_alpha = 0 is compared with eval mode, bn_alpha = 1 with train-mode BatchNorm (dropout off).
A parameter whose gradient float32 torch itself misses by more than the 5e-3 limit (ill-conditioned,
near-zero gradients) passes when the export is within 2x of torch float32 on it.
The loss is sum_i w_H H_i + sum_i w_CE CE(z_i, argmax z_i) with both weights non-zero, so both
terms of the adapt graph are checked. Figures are norm-relative: ||ort - ref|| / ||ref||.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from edgetta.contract import (
    BN_ALPHA,
    CE_WEIGHT,
    DATA_INPUT,
    ENTROPY,
    ENTROPY_WEIGHT,
    FEATURES,
    LOGITS,
    LOSS,
    SOFT_TARGET,
    SOFT_WEIGHT,
    grad_name,
)
from edgetta.errors import ExportError
from edgetta.export.norms import norm_kind
from edgetta.export.prepare import PreparedModel
from edgetta.export.trace import adapt_loss

LOGIT_TOLERANCE = 1e-4
GRAD_TOLERANCE = 5e-3


@dataclass
class ParityReport:
    bn_alpha: float
    batch: int
    logits_infer: float
    logits_adapt: float
    features: float | None
    batch_stats: float | None
    entropy: float
    loss: float
    grad_max: float
    grad_total: float
    worst_grad: str
    torch32_grad: float  # torch's own float32 error on worst_grad: the yardstick float32 can reach

    def to_json(self) -> dict:
        return {k: (round(v, 10) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _rel(ort: np.ndarray, ref: torch.Tensor, floor: float = 0.0) -> float:
    ref_np = ref.detach().double().numpy()
    denom = max(float(np.linalg.norm(ref_np)), floor, 1e-30)
    return float(np.linalg.norm(np.asarray(ort, dtype=np.float64) - ref_np) / denom)


def _reference_model(original: nn.Module, bn_alpha: float, dtype: torch.dtype) -> nn.Module:
    ref = copy.deepcopy(original).to(dtype).eval()
    if bn_alpha == 1.0:
        for module in ref.modules():
            if norm_kind(module) == "batchnorm":
                module.train()
                module.momentum = 0.0  # keep running stats untouched
    return ref


def reference_outputs(
    original: nn.Module,
    prepared: PreparedModel,
    x: np.ndarray,
    bn_alpha: float,
    entropy_weight: np.ndarray,
    ce_weight: np.ndarray,
    dtype: torch.dtype = torch.float64,
    soft_target: np.ndarray | None = None,
    soft_weight: np.ndarray | None = None,
) -> dict:
    ref = _reference_model(original, bn_alpha, dtype)
    modules = dict(ref.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[layer.module].register_forward_hook(lambda m, a, o, p=layer.module: captured.__setitem__(p, a[0]))
        for layer in prepared.bn_layers
    ]
    if prepared.classifier:
        hooks.append(
            modules[prepared.classifier].register_forward_hook(
                lambda m, a, o: captured.__setitem__("__features__", a[0])
            )
        )
    params = {n: p for n, p in ref.named_parameters()}
    trainable = [params[n] for n in prepared.trainable_names]
    with torch.enable_grad():
        logits = ref(torch.from_numpy(x).to(dtype))
        if soft_target is None or soft_weight is None:
            soft_target, soft_weight = np.zeros(tuple(logits.shape), np.float32), np.zeros(len(x), np.float32)
        loss, entropy = adapt_loss(
            logits,
            *(torch.from_numpy(a).to(dtype) for a in (entropy_weight, ce_weight, soft_target, soft_weight)),
        )
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
    for h in hooks:
        h.remove()
    stats = {}
    for layer in prepared.bn_layers:
        a = captured[layer.module]
        dims = [0] + list(range(2, a.dim()))
        mean = a.mean(dim=dims)
        stats[layer.batch_mean] = mean
        stats[layer.batch_var] = ((a - mean.reshape((1, -1) + (1,) * (a.dim() - 2))) ** 2).mean(dim=dims)
    grad_map = {
        n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(prepared.trainable_names, grads, trainable)
    }
    feats = captured.get("__features__")
    return {
        LOGITS: logits,
        ENTROPY: entropy,
        LOSS: loss,
        "grads": grad_map,
        "stats": stats,
        FEATURES: feats.reshape(feats.shape[0], -1) if feats is not None else None,
    }


def check_parity(
    original: nn.Module, prepared: PreparedModel, infer_session, adapt_session, x: np.ndarray, bn_alpha: float
) -> ParityReport:
    """Run both ORT sessions and the float64 reference on ``x`` at ``bn_alpha``; return the figures."""
    batch = x.shape[0]
    ew = np.full((batch,), 1.0 / batch, dtype=np.float32)
    cw = np.full((batch,), 0.5 / batch, dtype=np.float32)
    # A soft target (a shifted softmax) with a nonzero weight, so the check covers the contract-v2 soft term.
    rng = np.random.default_rng(0)
    st = rng.dirichlet(np.ones(prepared.num_classes), size=batch).astype(np.float32)
    sw = np.full((batch,), 0.25 / batch, dtype=np.float32)
    params = {n: prepared.tensor(n).numpy() for n in prepared.norm_param_names + prepared.stat_names}
    feed = {DATA_INPUT: x, BN_ALPHA: np.asarray(bn_alpha, dtype=np.float32), **params}
    infer_names = [o.name for o in infer_session.get_outputs()]
    infer = dict(zip(infer_names, infer_session.run(None, feed)))
    adapt_names = [o.name for o in adapt_session.get_outputs()]
    loss_feed = {ENTROPY_WEIGHT: ew, CE_WEIGHT: cw, SOFT_TARGET: st, SOFT_WEIGHT: sw}
    adapt = dict(zip(adapt_names, adapt_session.run(None, {**feed, **loss_feed})))
    ref = reference_outputs(original, prepared, x, bn_alpha, ew, cw, soft_target=st, soft_weight=sw)
    total_ref = torch.cat([g.flatten() for g in ref["grads"].values()])
    total_ort = np.concatenate([adapt[grad_name(n)].ravel() for n in prepared.trainable_names])
    # Per-parameter figures are floored at a small share of the whole gradient so that a parameter
    # whose gradient is ~0 does not report float32 round-off as a large relative error.
    floor = 1e-3 * float(total_ref.norm())
    per_param = {n: _rel(adapt[grad_name(n)], g, floor) for n, g in ref["grads"].items()}
    worst = max(per_param, key=per_param.get)
    torch32 = reference_outputs(
        original, prepared, x, bn_alpha, ew, cw, dtype=torch.float32, soft_target=st, soft_weight=sw
    )["grads"][worst]
    # Floor: a BN right after another train-mode BN sees an exactly zero-mean input.
    stats = [_rel(infer[name], value, 1e-4 * value.numel() ** 0.5) for name, value in ref["stats"].items()]
    return ParityReport(
        bn_alpha=bn_alpha,
        batch=batch,
        logits_infer=_rel(infer[LOGITS], ref[LOGITS]),
        logits_adapt=_rel(adapt[LOGITS], ref[LOGITS]),
        features=_rel(infer[FEATURES], ref[FEATURES]) if ref[FEATURES] is not None else None,
        batch_stats=max(stats) if stats else None,
        entropy=_rel(adapt[ENTROPY], ref[ENTROPY]),
        loss=_rel(adapt[LOSS], ref[LOSS]),
        grad_max=per_param[worst],
        grad_total=_rel(total_ort, total_ref),
        worst_grad=worst,
        torch32_grad=_rel(torch32.detach().numpy(), ref["grads"][worst], floor),
    )


def assert_within_tolerance(reports: list[ParityReport]) -> None:
    for r in reports:
        logits = max(r.logits_infer, r.logits_adapt)
        if logits > LOGIT_TOLERANCE:
            raise ExportError(
                f"parity check failed at bn_alpha={r.bn_alpha}: logits differ by {logits:.2e} "
                f"(norm-relative, limit {LOGIT_TOLERANCE:.0e}) from the float64 torch reference"
            )
        # A gradient that float32 torch itself cannot get closer than the limit is judged against torch.
        if r.grad_max > max(GRAD_TOLERANCE, 2.0 * r.torch32_grad):
            raise ExportError(
                f"parity check failed at bn_alpha={r.bn_alpha}: gradient of {r.worst_grad} differs by "
                f"{r.grad_max:.2e} (norm-relative, limit {GRAD_TOLERANCE:.0e}; torch float32 itself: "
                f"{r.torch32_grad:.2e}) from the float64 reference"
            )
