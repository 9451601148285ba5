"""FOA-style forward-only adaptation: the linear-head recovery, the configuration errors, and the runtime's
``foa`` (infer.onnx only) against a torch transcription of the authors' loop (tests/reference_tta.py
``FoaReference``) on the linear-probe BN ResNet: CMA-ES with the same seed picks the same candidate in
every batch and the shifted predictions agree on every sample.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgetta.errors import ConfigError
from edgetta.kernels.linear_head import LinearHeadFit
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config

ENGINE = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
BATCHES, BATCH = 8, 32


def test_linear_head_is_recovered_exactly_and_a_nonlinear_one_is_refused():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 6)), rng.normal(size=5)
    head = LinearHeadFit()
    for _ in range(3):
        f = rng.normal(size=(6, 6))
        head.add(f, f @ w.T + b)
    assert head.ready
    np.testing.assert_allclose(head.weight, w, atol=1e-8)
    f, delta = rng.normal(size=(4, 6)), rng.normal(size=6)
    np.testing.assert_allclose(head.shift(f @ w.T + b, delta), (f + delta) @ w.T + b, rtol=1e-5, atol=1e-5)
    bent = LinearHeadFit()
    for _ in range(3):
        f = rng.normal(size=(6, 6))
        bent.add(f, np.tanh(f @ w.T + b))
    assert not bent.ready and "not linear" in bent.failed


def test_foa_without_cma_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cma", None)
    with pytest.raises(ConfigError, match=r"pip install 'edgetta\[foa\]'"):
        load_config(None, method="foa")


torch = pytest.importorskip("torch")
pytest.importorskip("cma")

from tests.parity_models import Probed, export_probe  # noqa: E402
from tests.reference_tta import FoaReference  # noqa: E402


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Probed:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield export_probe(tmp_path_factory.mktemp("foa") / "probe", size=16, calib=None, classifier="fc")
    torch.set_num_threads(threads)


def foa_adapter(probe: Probed, **args) -> Adapter:
    return Adapter(probe.path, load_config(None, method="foa", method_args=args, batch_size=BATCH, engine=ENGINE))


def test_foa_matches_the_authors_loop(probe, tmp_path):
    stats = tmp_path / "calib.npz"
    np.savez(stats, x=probe.calib)
    adapter = foa_adapter(probe, source_stats=str(stats))
    ref = FoaReference(probe.model, torch.from_numpy(probe.calib))
    agree = total = shifted = 0
    for x in probe.task.stream(seed=4, batches=BATCHES, batch=BATCH):
        res = adapter.process(x)
        logits = ref.forward(torch.from_numpy(x)).numpy()
        agree += int(np.sum(res.preds == logits.argmax(1)))
        total += len(x)
        shifted += int(adapter.method.hist is not None and adapter.method.head.ready)
        np.testing.assert_allclose(res.logits, logits, rtol=1e-3, atol=1e-3)
    method = adapter.method
    print(
        f"\n[foa] agreement {agree / total:.4f}, candidates chosen {ref.chosen}, "
        f"best z norm {np.linalg.norm(method.best):.3f}, passes {dict(adapter.totals)}"
    )
    np.testing.assert_allclose(method.best, ref.best, rtol=1e-6, atol=1e-9)
    assert agree == total
    assert len(set(ref.chosen)) > 1 and np.linalg.norm(ref.best) > 0, "the search never moved: weak test"
    assert shifted >= BATCHES - 2, "the activation shift was not applied"
    popsize = method.es.popsize
    assert adapter.totals["forward_passes"] == BATCHES * (popsize + 1) and adapter.totals["backward_passes"] == 0


def test_foa_source_stats_as_mean_std_equal_calibration_inputs(probe, tmp_path):
    from edgetta.runtime.methods.foa import feature_stats

    a = foa_adapter(probe, source_stats=str(_npz(tmp_path / "x.npz", x=probe.calib)))
    mean, std = a.method.feature_source
    b = foa_adapter(probe, source_stats=str(_npz(tmp_path / "ms.npz", mean=mean, std=std)))
    np.testing.assert_array_equal(b.method.feature_source[0], mean)
    again = feature_stats(a.engine, a.state.source, probe.calib, 0.0, batch_size=50)
    np.testing.assert_allclose(again[0], mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="does not exist"):
        foa_adapter(probe, source_stats=str(tmp_path / "missing.npz"))
    with pytest.raises(ConfigError, match="neither"):
        foa_adapter(probe, source_stats=str(_npz(tmp_path / "bad.npz", y=np.zeros(3))))
    with pytest.raises(ConfigError, match="source statistics"):
        foa_adapter(probe, layer_stats=False)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_foa_checkpoint_keeps_the_best_candidate_shift_and_head(probe, tmp_path):
    stats = str(_npz(tmp_path / "calib.npz", x=probe.calib))
    adapter = foa_adapter(probe, popsize=4, source_stats=stats)
    for x in probe.task.stream(seed=4, batches=3, batch=BATCH):
        adapter.process(x)
    adapter.save(tmp_path / "ckpt")
    resumed = foa_adapter(probe, popsize=4, source_stats=stats)
    resumed.restore(tmp_path / "ckpt")
    np.testing.assert_array_equal(resumed.method.best, adapter.method.best)
    assert np.linalg.norm(adapter.method.best) > 0 and adapter.method.head.ready
    x = probe.task.stream(seed=9, batches=1, batch=BATCH)[0]
    # Forward without a search step: the restored best candidate gives the same predictions.
    (a, _), (b, _) = adapter.method.forward(x, False), resumed.method.forward(x, False)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)  # the checkpoint stores float32
    assert a.forward_passes == 1
