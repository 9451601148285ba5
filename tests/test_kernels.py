"""Tests for edgetta.kernels (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetta.kernels import (
    FisherAccumulator,
    RedundancyFilter,
    affinity_matrix,
    cosine_to,
    ema_update,
    ema_update_dict,
    entropy,
    fisher_penalty,
    fisher_penalty_grad,
    lame,
    lame_energy,
    log_softmax,
    softmax,
)


def _direct_entropy(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -np.sum(p * np.log(p), axis=-1)


def test_softmax_family_matches_direct_float64() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(16, 10)).astype(np.float32)
    p = softmax(logits)
    assert p.dtype == np.float32 and log_softmax(logits).dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(log_softmax(logits)), p, rtol=1e-5)
    h = entropy(logits)
    assert h.shape == (16,) and h.dtype == np.float32
    np.testing.assert_allclose(h, _direct_entropy(logits), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(softmax(logits.T, axis=0), p.T, rtol=1e-6)


def test_extreme_logits_stay_finite() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=np.float32)
    for out in (softmax(logits), log_softmax(logits), entropy(logits)):
        assert np.all(np.isfinite(out))
    np.testing.assert_allclose(entropy(logits), [0.0, np.log(3), np.log(2)], atol=1e-6)
    masked = np.array([[0.0, -np.inf, 0.0]])
    np.testing.assert_allclose(entropy(masked), [np.log(2)])


def test_ema() -> None:
    assert ema_update(1.0, 0.0, 0.9) == pytest.approx(0.9)
    np.testing.assert_allclose(ema_update(np.ones(3), np.zeros(3), 0.25), 0.25)
    target = {"a": np.ones(3, dtype=np.float32)}
    keep = target["a"]
    ema_update_dict(target, {"a": np.full(3, 3.0, dtype=np.float32), "extra": np.zeros(1)}, 0.5)
    assert target["a"] is keep
    np.testing.assert_allclose(keep, 2.0)
    with pytest.raises(KeyError):
        ema_update_dict({"b": np.zeros(1)}, {}, 0.5)


def test_redundancy_filter_drops_near_duplicates() -> None:
    rng = np.random.default_rng(1)
    probs = softmax(np.eye(4)[np.zeros(8, dtype=int)] * 8 + rng.normal(scale=0.1, size=(8, 4)))
    filt = RedundancyFilter(eps=0.4)
    assert filt.mask(probs).all()  # no running mean yet: keep everything
    filt.update(probs)
    np.testing.assert_allclose(filt.m, probs.mean(0))
    dup = probs[:3]
    other = softmax(np.eye(4)[[1, 2, 3]] * 8)
    keep = filt.mask(np.concatenate([dup, other]))
    assert keep.tolist() == [False] * 3 + [True] * 3
    m_before = filt.m.copy()
    filt.update(other)
    np.testing.assert_allclose(filt.m, 0.9 * m_before + 0.1 * other.mean(0))
    filt.update(np.zeros((0, 4)))
    restored = RedundancyFilter(eps=0.4)
    restored.load_state(filt.state())
    np.testing.assert_array_equal(restored.m, filt.m)
    assert RedundancyFilter(0.4).state() == {}
    np.testing.assert_allclose(cosine_to(np.array([1.0, 0.0]), np.array([[2.0, 0.0], [1.0, 1.0]])), [1, 2**-0.5])


def test_fisher_accumulator_and_penalty_gradient() -> None:
    rng = np.random.default_rng(2)
    acc = FisherAccumulator()
    batches = [{"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=3)} for _ in range(4)]
    for grads in batches:
        acc.update(grads)
    fisher = acc.mean()
    np.testing.assert_allclose(fisher["w"], np.mean([g["w"].astype(np.float64) ** 2 for g in batches], 0), rtol=1e-6)
    assert fisher["w"].dtype == np.float32 and acc.count == 4

    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=3), "free": rng.normal(size=2)}
    anchor = {k: v + rng.normal(size=v.shape) for k, v in params.items()}
    beta = 3.0
    grad = fisher_penalty_grad(params, anchor, fisher, beta)
    assert set(grad) == {"w", "b"}
    h = 1e-6
    for name in ("w", "b"):
        for idx in np.ndindex(params[name].shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += h
            minus[name][idx] -= h
            fd = (fisher_penalty(plus, anchor, fisher, beta) - fisher_penalty(minus, anchor, fisher, beta)) / (2 * h)
            assert grad[name][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert fisher_penalty(anchor, anchor, fisher, beta) == 0.0


def _clustered_batch(seed: int, n_per_class: int = 16, classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, 32))
    features = centres[labels] + 0.3 * rng.normal(size=(labels.size, 32))
    logits = 1.0 * np.eye(classes)[labels] + rng.normal(scale=1.0, size=(labels.size, classes))
    return softmax(logits).astype(np.float32), features.astype(np.float32), labels


@pytest.mark.parametrize("affinity", ["knn", "rbf", "linear"])
def test_lame_improves_accuracy_on_clustered_features(affinity: str) -> None:
    probs, features, labels = _clustered_batch(3)
    out = lame(probs, features, affinity=affinity)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    before = np.mean(probs.argmax(1) == labels)
    after = np.mean(out.argmax(1) == labels)
    assert after > before + 0.1, (before, after)


def test_lame_energy_decreases_and_edge_cases() -> None:
    probs, features, _ = _clustered_batch(4)
    w = affinity_matrix(features, "knn", knn=5)
    assert np.all(w.sum(1) == 5) and np.all(np.diag(w) == 0)
    log_p = np.log(probs.astype(np.float64))
    out = lame(probs, features).astype(np.float64)
    assert lame_energy(out, log_p, w, 1.0) < lame_energy(probs.astype(np.float64), log_p, w, 1.0)

    one = probs[:1]
    np.testing.assert_array_equal(lame(one, features[:1]), one)
    small = lame(probs[:3], features[:3], knn=10)  # k clipped to B - 1
    np.testing.assert_allclose(small.sum(1), 1.0, rtol=1e-5)
    assert affinity_matrix(features[:3], "knn", knn=10).sum() == 6
    with pytest.raises(ValueError, match="knn, rbf, linear"):
        lame(probs, features, affinity="cosine")


def test_kernels_and_runtime_helpers_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgetta.kernels, edgetta.runtime.optim, edgetta.runtime.checkpoint;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
