"""STAMP's stable memory: the runtime's ``stamp`` against a torch transcription of the authors' memory and
update loop (tests/reference_tta.py ``StampReference``) on the linear-probe BN ResNet: the memory holds the
same samples after every batch (so class balance and eviction agree), the parameters agree to float32
noise and the pre-update predictions agree on every sample; plus a checkpoint round trip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetta.errors import ConfigError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config

ENGINE = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
SGD = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
BATCHES, BATCH, CAPACITY = 12, 32, 24


def memory_of(adapter: Adapter) -> np.ndarray:
    mem = adapter.method.memory
    return np.stack([item for c in mem.items for item in c])


def test_stamp_arguments_are_checked():
    for bad, key in (
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"margin_fraction": 0}, "margin"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, method="stamp", method_args=bad)


torch = pytest.importorskip("torch")

from tests.parity_models import NUM_CLASSES, Probed, export_probe  # noqa: E402
from tests.reference_tta import StampReference  # noqa: E402


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Probed:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield export_probe(tmp_path_factory.mktemp("stamp") / "probe", size=16, calib=None)
    torch.set_num_threads(threads)


def test_stamp_matches_the_authors_loop(probe):
    args = {**SGD, "capacity": CAPACITY, "margin_fraction": 0.4, "seed": 5}
    cfg = load_config(
        None, method="stamp", method_args=args, rails=["nonfinite_guard"], batch_size=BATCH, engine=ENGINE
    )
    adapter = Adapter(probe.path, cfg)
    ref = StampReference(probe.model, margin=0.4 * math.log(NUM_CLASSES), capacity=CAPACITY, seed=5, **SGD)
    names = list(adapter.state.trainable)
    assert names == list(ref.params)
    source = np.concatenate([adapter.state.source[k].ravel() for k in names]).astype(np.float64)
    agree = total = 0
    for i, x in enumerate(probe.task.stream(seed=2, batches=BATCHES, batch=BATCH)):
        res = adapter.process(x)
        logits = ref.forward_and_adapt(torch.from_numpy(x)).numpy()
        agree += int(np.sum(res.preds == logits.argmax(1)))
        total += len(x)
        np.testing.assert_array_equal(memory_of(adapter), ref.memories[i], err_msg=f"memory differs at batch {i}")
    sizes = [len(c) for c in adapter.method.memory.items]
    rt = np.concatenate([adapter.state.params[k].ravel() for k in names]).astype(np.float64)
    want = np.concatenate([v.ravel() for v in ref.params_numpy().values()]).astype(np.float64)
    diff = np.linalg.norm(rt - want) / np.linalg.norm(want)
    moved = np.linalg.norm(want - source) / np.linalg.norm(source)
    print(
        f"\n[stamp] param diff {diff:.2e}, moved {moved:.2e}, agreement {agree / total:.4f}, "
        f"class sizes {sizes}, stored {sum(ref.stored)}, updates {ref.updates}"
    )
    assert sum(sizes) == CAPACITY, "the memory never filled: eviction untested"
    assert sum(ref.stored) > 2 * CAPACITY, "too few reliable samples: eviction barely exercised"
    assert moved >= 1e-2, "the parameters barely moved: weak test"
    assert diff <= 1e-3, f"parameters differ from the authors' loop by {diff:.2e} (norm-relative)"
    assert agree == total, f"predictions agree on {agree}/{total}"
    assert adapter.totals["updates"] == ref.updates


def test_stamp_checkpoint_resumes_the_same_trajectory(probe, tmp_path):
    """The memory, its class-size EMA and the tie-break generator are checkpointed: save after 3 batches,
    restore into a fresh adapter, and the next batches match an uninterrupted run exactly."""
    cfg = load_config(
        None, method="stamp", method_args={**SGD, "capacity": CAPACITY, "seed": 3}, batch_size=BATCH, engine=ENGINE
    )
    stream = probe.task.stream(seed=6, batches=6, batch=BATCH)
    whole, first = Adapter(probe.path, cfg), Adapter(probe.path, cfg)
    for x in stream[:3]:
        whole.process(x)
        first.process(x)
    first.save(tmp_path / "ckpt")
    resumed = Adapter(probe.path, cfg)
    resumed.restore(tmp_path / "ckpt")
    np.testing.assert_array_equal(memory_of(resumed), memory_of(whole))
    for x in stream[3:]:
        a, b = whole.process(x), resumed.process(x)
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(memory_of(resumed), memory_of(whole))
    for k in whole.state.trainable:
        np.testing.assert_array_equal(whole.state.params[k], resumed.state.params[k])
    assert whole.totals["updates"] >= 5
