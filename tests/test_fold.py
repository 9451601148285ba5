"""Folded inference (edgetta.engines.ort.fold): while the parameters stay the same the infer graph runs with them
as constants and gives the general session's results; any change -- in place, new arrays, a bundle-like swap --
is never answered by a stale fold, and the fold is rebuilt for the new values."""

from __future__ import annotations

import numpy as np
import pytest

from edgetta.contract import LOGITS, load_artifact
from edgetta.engines import EngineOptions, OrtEngine
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config


@pytest.fixture(scope="module")
def artifact(artifacts):
    path, _ = artifacts.get("resnet_bn")
    return load_artifact(path)


@pytest.fixture
def engines(artifact, tmp_path):
    """(folding engine, the same engine with folding off)."""
    return (
        OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path))),
        OrtEngine(artifact, EngineOptions(cache_dir=str(tmp_path), extra={"fold": False})),
    )


def batch(artifact, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *artifact.input_shape[1:])).astype(np.float32)


def copy(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in params.items()}


def fold_of(engine: OrtEngine, alpha: float, outputs: list[str] | None):
    return engine.folds.state(engine.variant("infer", alpha, outputs))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("outputs", [[LOGITS], None])
def test_folded_predictions_equal_the_general_session(artifact, engines, outputs):
    folding, plain = engines
    params = copy(artifact.params)
    x = batch(artifact, 8, 1)
    want = plain.infer(x, params, 0.0, outputs)
    for _ in range(3):
        assert_close(folding.infer(x, params, 0.0, outputs), want)
    fold = fold_of(folding, 0.0, outputs)
    assert fold.variant is not None and fold.builds == 1 and fold.served == 2
    assert fold.variant.params == []  # every parameter is a constant of the folded graph


@pytest.mark.parametrize(("alpha", "outputs"), [(1.0, [LOGITS]), (1.0, None), (0.4, [LOGITS])])
def test_batch_statistics_variants_never_fold(artifact, engines, alpha, outputs):
    """With batch statistics BN cannot fold into the convolution, and a folded logits-only variant at
    bn_alpha = 1 was seen to give wrong logits (off by ~10 on a small BN ResNet): such calls always run the
    general session."""
    folding, plain = engines
    params = copy(artifact.params)
    x = batch(artifact, 8, 1)
    want = plain.infer(x, params, alpha, outputs)
    for _ in range(3):
        assert_close(folding.infer(x, params, alpha, outputs), want)
    fold = fold_of(folding, alpha, outputs)
    assert fold.variant is None and fold.builds == 0


def test_in_place_change_refolds_and_is_never_stale(artifact, engines):
    folding, plain = engines
    params = copy(artifact.params)
    x = batch(artifact, 4, 2)
    for _ in range(3):
        folding.infer(x, params, 0.0, [LOGITS])
    fold = fold_of(folding, 0.0, [LOGITS])
    assert fold.builds == 1
    name = next(n for n in params if n.endswith("running_var"))
    params[name] *= 3.0  # the same array object, changed in place
    want = plain.infer(x, params, 0.0, [LOGITS])
    assert_close(folding.infer(x, params, 0.0, [LOGITS]), want)
    assert fold.variant is None  # the stale fold is gone
    assert_close(folding.infer(x, params, 0.0, [LOGITS]), want)
    assert fold.builds == 2 and fold.variant is not None  # folded again for the new values
    assert_close(folding.infer(x, params, 0.0, [LOGITS]), want)


def test_bundle_like_swap_is_never_served_by_the_old_fold(artifact, engines):
    folding, plain = engines
    source = copy(artifact.params)
    rng = np.random.default_rng(3)
    bundle = {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in source.items()}
    bundle = {k: np.abs(v) if k.endswith("running_var") else v for k, v in bundle.items()}
    x = batch(artifact, 4, 3)
    for _ in range(4):
        folding.infer(x, source, 0.0, [LOGITS])
    got = folding.infer(x, bundle, 0.0, [LOGITS])
    assert_close(got, plain.infer(x, bundle, 0.0, [LOGITS]))
    assert not np.allclose(got[LOGITS], plain.infer(x, source, 0.0, [LOGITS])[LOGITS], atol=1e-3)
    for _ in range(3):
        assert_close(folding.infer(x, bundle, 0.0, [LOGITS]), plain.infer(x, bundle, 0.0, [LOGITS]))
    assert_close(folding.infer(x, source, 0.0, [LOGITS]), plain.infer(x, source, 0.0, [LOGITS]))


def test_parameters_changing_every_call_stop_folding(artifact, engines):
    folding, _ = engines
    params = copy(artifact.params)
    name = next(n for n in params if n.endswith("weight"))
    x = batch(artifact, 2, 4)
    for _ in range(40):  # two calls per parameter state: every fold would be dropped before it pays
        params[name] = params[name] + 0.01
        folding.infer(x, params, 0.0, [LOGITS])
        folding.infer(x, params, 0.0, [LOGITS])
    fold = fold_of(folding, 0.0, [LOGITS])
    assert fold.builds <= 2 and fold.threshold > 2


def test_frozen_method_runs_folded(artifact, tmp_path):
    engine = {"cache_dir": str(tmp_path)}
    folded = Adapter(artifact, load_config(None, method="frozen", batch_size=8, engine=engine))
    general = Adapter(
        artifact, load_config(None, method="frozen", batch_size=8, engine={**engine, "extra": {"fold": False}})
    )
    for seed in range(4):
        x = batch(artifact, 8, 10 + seed)
        np.testing.assert_allclose(folded.process(x).logits, general.process(x).logits, rtol=1e-5, atol=1e-5)
    fold = fold_of(folded.engine, 0.0, [LOGITS])
    assert fold.builds == 1 and fold.served >= 2
