"""Defaults that depend on the number of classes (docs/validation.md): EATA's redundancy threshold
eps = sqrt(2 / C) against the paper's values, the diversity gate's bound at many classes, and the presets
that use them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetta.kernels import entropy, softmax
from edgetta.runtime.config import load_config
from edgetta.runtime.methods.eata import Eata
from edgetta.safety.base import StepContext
from edgetta.safety.gates import DiversityGate


def context(logits: np.ndarray) -> StepContext:
    n, c = logits.shape
    return StepContext(
        batch_index=0,
        update_count=0,
        num_classes=c,
        logits=logits,
        probs=softmax(logits),
        entropy=entropy(logits),
        weights=np.full(n, 1.0 / n, np.float32),
        params={},
        source={},
    )


@pytest.mark.parametrize("classes,paper", [(10, 0.4), (1000, 0.05)])
def test_eata_eps_rule_is_within_12_percent_of_the_papers_values(classes, paper):
    eps = Eata().eps(classes)
    assert eps == pytest.approx(math.sqrt(2.0 / classes))
    assert abs(eps - paper) / paper < 0.12, f"eps {eps:.4f} for C = {classes}, paper {paper}"
    assert Eata(eps=0.3).eps(classes) == 0.3


def test_eata_rule_keeps_confident_samples_of_a_balanced_ten_class_stream():
    """A class-balanced stream of confident predictions: the ImageNet eps 0.05 drops nearly every sample as
    redundant from the second batch on (cos ~ 1/sqrt(10) = 0.32); the rule keeps most of them."""
    rng = np.random.default_rng(0)
    kept = {}
    for name, method in (("imagenet", Eata(eps=0.05)), ("rule", Eata())):
        total = 0
        for _ in range(5):
            logits = (6.0 * np.eye(10)[rng.integers(0, 10, 64)] + rng.normal(size=(64, 10))).astype(np.float32)
            ctx = context(logits)
            method.select(ctx)
            total += int(np.sum(ctx.weights > 0))
        kept[name] = total
    print(f"\n[defaults] kept of 320 confident balanced samples: {kept}")
    assert kept["imagenet"] < 80 and kept["rule"] > 200


def test_diversity_gate_bound_at_many_classes():
    gate = DiversityGate()
    rng = np.random.default_rng(0)
    iid = context(rng.normal(size=(64, 1000)).astype(np.float32))
    gate.before_update(iid)
    assert not iid.skip_update, "an i.i.d. batch over 1000 classes must not look label-correlated"
    sorted_batch = np.zeros((64, 1000), np.float32)
    sorted_batch[:, 7] = 5.0
    one_class = context(sorted_batch + rng.normal(size=(64, 1000)).astype(np.float32) * 0.1)
    gate.before_update(one_class)
    assert one_class.skip_update
    assert gate.bound(10, 64) == pytest.approx(0.35) and gate.bound(5, 64) == pytest.approx(0.7)
    assert gate.bound(1000, 64) == pytest.approx(5 / 64)


def test_presets_use_the_class_count_rule():
    eata = load_config(preset="eata")
    assert "eps" not in eata.method_args or eata.method_args["eps"] is None
    method = Eata(**{k: v for k, v in eata.method_args.items() if k not in ("optimizer",)} | {"optimizer": "sgd"})
    assert method.eps(10) == pytest.approx(math.sqrt(0.2))


@pytest.mark.parametrize("lr_batch,batch,step", [(64, 32, 0.05), (64, 128, 0.2), (0, 32, 0.1)])
def test_lr_scales_linearly_with_the_batch(lr_batch, batch, step):
    from edgetta.runtime.methods.tent import Tent

    method = Tent(lr=0.1, lr_batch=lr_batch, momentum=0.0)
    ctx = context(np.zeros((batch, 10), np.float32))
    ctx.params, ctx.grads = {"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float32)}
    proposed = method.propose(ctx, {})
    np.testing.assert_allclose(proposed["w"], 1.0 - step, rtol=1e-6)
    assert load_config(preset="tent").method_args["lr_batch"] == 64
