"""Tests for edgetta.runtime.optim; torch is imported only inside the parity tests."""

from __future__ import annotations

import numpy as np
import pytest

from edgetta.runtime.optim import SGD, Adam, Optimizer, make_optimizer

SHAPES = {"layer1.bn.weight": (8,), "layer1.bn.bias": (8,), "head.norm.weight": (2, 3)}


def _random_problem(dtype: type, steps: int = 20, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]
    grads[3].pop("head.norm.weight")  # a parameter that misses a step keeps its own step count
    return params, grads


def _run_torch(torch_cls: type, kwargs: dict, params: dict, grads: list[dict]) -> dict[str, np.ndarray]:
    import torch

    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch_cls(list(tparams.values()), foreach=False, **kwargs)
    for g in grads:
        opt.zero_grad(set_to_none=True)
        for k, v in g.items():
            tparams[k].grad = torch.from_numpy(v.copy())
        opt.step()
    return {k: v.detach().numpy() for k, v in tparams.items()}


def _run_numpy(opt: Optimizer, params: dict, grads: list[dict]) -> dict[str, np.ndarray]:
    state = {k: v.copy() for k, v in params.items()}
    for g in grads:
        opt.step(state, g)
    return state


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-2},
]
ADAM_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "kwargs"), [("sgd", k) for k in SGD_CASES] + [("adam", k) for k in ADAM_CASES])
def test_matches_torch(name: str, kwargs: dict, dtype: type) -> None:
    torch = pytest.importorskip("torch")
    torch_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name]
    params, grads = _random_problem(dtype)
    expected = _run_torch(torch_cls, kwargs, params, grads)
    got = _run_numpy(make_optimizer(name, **kwargs), params, grads)
    # float64 agrees to rounding; float32 differs by a few ulps (torch's CPU kernels fuse multiply-adds), so the
    # float32 tolerance is relative to each tensor's largest magnitude rather than elementwise.
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for k in SHAPES:
        assert got[k].dtype == dtype
        assert np.max(np.abs(got[k] - expected[k])) <= rtol * np.max(np.abs(expected[k])), k


def test_state_dict_round_trip_continues_identically() -> None:
    params, grads = _random_problem(np.float32)
    for make in (lambda: SGD(0.05, momentum=0.9, nesterov=True), lambda: Adam(1e-2)):
        straight = _run_numpy(make(), params, grads)
        first = make()
        mid = _run_numpy(first, params, grads[:10])
        tensors, meta = first.state_dict()
        assert all("/" in key for key in tensors)
        second = make()
        second.load_state_dict(tensors, meta)
        resumed = _run_numpy(second, mid, grads[10:])
        for k in SHAPES:
            np.testing.assert_array_equal(resumed[k], straight[k])
    _, meta = Adam().state_dict()
    assert meta == {"optimizer": "adam", "hparams": Adam().hparams(), "steps": {}}
    assert "exp_avg/layer1.bn.weight" in first.state_dict()[0]
    assert first.state_dict()[1]["steps"]["head.norm.weight"] == 9


def test_only_keys_in_grads_update_in_place_and_reset() -> None:
    params = {"a": np.ones(3, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
    a, b = params["a"], params["b"]
    opt = SGD(lr=0.5, momentum=0.9)
    opt.step(params, {"a": np.ones(3, dtype=np.float32)})
    assert params["a"] is a and params["b"] is b
    np.testing.assert_allclose(a, 0.5)
    np.testing.assert_allclose(b, 1.0)
    opt.lr = 0.1
    opt.step(params, {"a": np.zeros(3, dtype=np.float32)})
    np.testing.assert_allclose(a, 0.5 - 0.1 * 0.9)
    opt.reset()
    assert opt.state_dict()[0] == {}
    with pytest.raises(KeyError):
        opt.step(params, {"c": np.zeros(1)})
    with pytest.raises(ValueError):
        opt.step(params, {"a": np.zeros(4)})
    with pytest.raises(ValueError):
        opt.lr = -1.0


def test_factory_and_validation_errors() -> None:
    assert isinstance(make_optimizer("SGD", lr=0.1), SGD)
    assert make_optimizer("adam", betas=[0.5, 0.6]).betas == (0.5, 0.6)
    with pytest.raises(ValueError, match="adam, sgd"):
        make_optimizer("rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="unknown argument.*momentum"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="not 'sgd'"):
        SGD(0.1).load_state_dict({}, {"optimizer": "adam"})
    with pytest.raises(ValueError, match="unexpected"):
        SGD(0.1).load_state_dict({"exp_avg/a": np.zeros(1)}, {"optimizer": "sgd"})
