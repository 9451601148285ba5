"""Check a rewritten graph against the exported one before it is used (and cached)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetta.contract import Artifact
from edgetta.engines.feed import DataInputs

VERIFY_BATCH = 2
VERIFY_RTOL = 1e-3


def _run(session: Any, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    accepted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in accepted})))


def compare_with_export(
    reference: Any,
    candidate: Any,
    artifact: Artifact,
    inputs: DataInputs,
    param_inputs: Sequence[str],
    bn_alpha: float | None,
) -> str | None:
    """Run both sessions on a fixed random batch with the source parameters; None when they agree, else what
    differs. ``bn_alpha``: the value the candidate is specialised to (None: it is an input; 1.0 and 0.5 are
    checked). Each output within VERIFY_RTOL of its norm; a gradient's norm is floored at 1% of the norm of all
    gradients (a near-zero gradient is float32 round-off in both graphs, as in export's parity check), a BN
    batch mean's at the norm of the channels' standard deviations. Norms in float64 (no overflow warnings)."""
    rng = np.random.default_rng(0)
    shape = [VERIFY_BATCH] + [int(d) for d in artifact.input_shape[1:]]
    x = rng.standard_normal(shape).astype(np.float32)
    params = {name: np.ascontiguousarray(artifact.params[name], dtype=np.float32) for name in param_inputs}
    weights = np.full(VERIFY_BATCH, 1.0 / VERIFY_BATCH, np.float32)
    names = [o.name for o in candidate.get_outputs()]
    grads = set(artifact.grad_names.values())
    spreads = {layer.batch_mean: layer.batch_var for layer in artifact.norm_layers if layer.batch_mean}
    with np.errstate(all="ignore"):  # a non-finite output is reported below, not warned about
        return _compare(reference, candidate, names, grads, spreads, params, inputs, x, weights, bn_alpha)


def _compare(
    reference: Any,
    candidate: Any,
    names: list[str],
    grads: set[str],
    spreads: dict[str, str],
    params: dict[str, np.ndarray],
    inputs: DataInputs,
    x: np.ndarray,
    weights: np.ndarray,
    bn_alpha: float | None,
) -> str | None:
    for alpha in [bn_alpha] if bn_alpha is not None else [1.0, 0.5]:
        soft = {}
        if inputs.has_soft_target:  # contract v2: the soft cross-entropy term is checked too
            target = np.random.default_rng(1).dirichlet(np.ones(inputs.num_classes), size=len(x)).astype(np.float32)
            soft = {"soft_target": target, "soft_weight": weights * 0.25}
        feed = {**params, **inputs.feed(x, alpha, weights, weights * 0.5, **soft)}
        extra = [spreads[n] for n in names if n in spreads and spreads[n] not in names]
        expected, got = _run(reference, names + extra, feed), _run(candidate, names, feed)
        expected = {k: v.astype(np.float64) for k, v in expected.items()}  # no float32 overflow in the norms
        total = float(np.sqrt(sum(float(np.sum(expected[n] ** 2)) for n in names if n in grads)))
        for name in names:
            e, g = expected[name], got[name].astype(np.float64)
            if e.shape != g.shape:
                return f"output {name} has shape {g.shape}, expected {e.shape}"
            scale = max(float(np.linalg.norm(e)), 0.01 * total if name in grads else 0.0, 1e-6)
            if name in spreads and spreads[name] in expected:
                # A batch mean near zero (the input was batch-normalised just before) is round-off in both
                # graphs: judge its error against the channels' spread, as a BN output would feel it.
                scale = max(scale, float(np.linalg.norm(np.sqrt(np.maximum(expected[spreads[name]], 0.0)))))
            if not np.all(np.isfinite(g)) or float(np.linalg.norm(g - e)) > VERIFY_RTOL * scale:
                return f"output {name} differs from the exported graph at bn_alpha={alpha}"
    return None
