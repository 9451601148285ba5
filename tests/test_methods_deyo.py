"""DeYO: the patch-shuffling kernel, and the runtime's ``deyo`` against a torch transcription of the
authors' released loop (tests/reference_tta.py ``DeyoReference``) on the linear-probe BN ResNet: the same
samples pass each filter in every batch, the parameters agree to float32 noise after 20 batches and the
pre-update predictions agree on every sample. The stream is chosen so that both filters drop samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetta.errors import ConfigError
from edgetta.kernels.patch_shuffle import patch_permutations, patch_shuffle
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config

ENGINE = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
SGD = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
BATCHES, BATCH = 20, 32


# -- the kernel (no torch) -----------------------------------------------------------------------------


def test_patch_shuffle_moves_whole_patches():
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    perms = np.array([[1, 0, 2, 3], [3, 2, 1, 0]])
    out = patch_shuffle(x, 2, perms)
    # sample 0: top-left and top-right patches swapped; sample 1: patch order reversed
    np.testing.assert_array_equal(out[0, :, :4, :4], x[0, :, :4, 4:])
    np.testing.assert_array_equal(out[0, :, :4, 4:], x[0, :, :4, :4])
    np.testing.assert_array_equal(out[0, :, 4:], x[0, :, 4:])
    np.testing.assert_array_equal(out[1, :, :4, :4], x[1, :, 4:, 4:])
    np.testing.assert_array_equal(out[1, :, 4:, :4], x[1, :, :4, 4:])
    identity = patch_shuffle(x, 2, np.tile(np.arange(4), (2, 1)))
    np.testing.assert_array_equal(identity, x)


def test_patch_shuffle_keeps_the_border_and_handles_signals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 10, 9)).astype(np.float32)
    out = patch_shuffle(x, 4, patch_permutations(rng, 3, 16))
    np.testing.assert_array_equal(out[:, :, 8:], x[:, :, 8:])  # rows past 4 * 2 stay
    np.testing.assert_array_equal(out[:, :, :, 8:], x[:, :, :, 8:])
    assert not np.array_equal(out, x)
    np.testing.assert_allclose(np.sort(out.ravel()), np.sort(x.ravel()))  # the same values, moved
    signal = np.arange(12, dtype=np.float32).reshape(1, 1, 12)
    np.testing.assert_array_equal(
        patch_shuffle(signal, 3, np.array([[2, 0, 1]]))[0, 0], [8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7]
    )
    with pytest.raises(ValueError, match="perms"):
        patch_shuffle(x, 4, np.zeros((3, 4), int))


def test_deyo_arguments_are_checked():
    for bad, key in (
        ({"patch_grid": 0}, "patch_grid"),
        ({"tau_plpd": 1.5}, "tau_plpd"),
        ({"tau_plpd": "0.2"}, "tau_plpd"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, method="deyo", method_args=bad)


# -- parity with the authors' loop ----------------------------------------------------------------------

torch = pytest.importorskip("torch")

from tests.parity_models import NUM_CLASSES, Probed, export_probe  # noqa: E402
from tests.reference_tta import DeyoReference  # noqa: E402


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Probed:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield export_probe(tmp_path_factory.mktemp("deyo") / "probe", size=16, calib=None)
    torch.set_num_threads(threads)


def test_deyo_matches_the_authors_loop(probe):
    tau_ent, e0 = 0.5 * math.log(NUM_CLASSES), 0.4 * math.log(NUM_CLASSES)
    args = {**SGD, "tau_ent_fraction": 0.5, "e0_fraction": 0.4, "tau_plpd": 0.2, "patch_grid": 4, "seed": 7}
    cfg = load_config(None, method="deyo", method_args=args, rails=["nonfinite_guard"], batch_size=BATCH, engine=ENGINE)
    adapter = Adapter(probe.path, cfg)
    ref = DeyoReference(probe.model, tau_ent=tau_ent, e0=e0, tau_plpd=0.2, grid=4, seed=7, **SGD)
    names = list(adapter.state.trainable)
    assert names == list(ref.params)
    source = np.concatenate([adapter.state.source[k].ravel() for k in names]).astype(np.float64)
    agree = total = 0
    kept, reliable, passes = [], [], []
    for x in probe.task.stream(seed=2, batches=BATCHES, batch=BATCH):
        res = adapter.process(x)
        logits = ref.forward_and_adapt(torch.from_numpy(x)).numpy()
        agree += int(np.sum(res.preds == logits.argmax(1)))
        total += len(x)
        gate = [e.data for e in res.events if e.rail == "deyo" and e.kind == "gate"]
        kept.append(gate[0]["kept"] if gate else BATCH)
        reliable.append(gate[0]["reliable"] if gate else BATCH)
    rt = np.concatenate([adapter.state.params[k].ravel() for k in names]).astype(np.float64)
    want = np.concatenate([v.ravel() for v in ref.params_numpy().values()]).astype(np.float64)
    diff = np.linalg.norm(rt - want) / np.linalg.norm(want)
    moved = np.linalg.norm(want - source) / np.linalg.norm(source)
    passes = adapter.totals
    print(
        f"\n[deyo] param diff {diff:.2e}, moved {moved:.2e}, agreement {agree / total:.4f}, "
        f"reliable {sum(ref.reliable)}, kept {sum(ref.kept)} of {BATCHES * BATCH}, updates {ref.updates}, "
        f"passes {dict(passes)}"
    )
    assert reliable == ref.reliable, "the entropy filter kept other samples than the authors' loop"
    assert kept == ref.kept, "the PLPD filter kept other samples than the authors' loop"
    assert 0 < sum(ref.kept) < sum(ref.reliable) < BATCHES * BATCH, "both filters must drop samples: weak test"
    assert moved >= 1e-2, "the parameters barely moved: weak test"
    assert diff <= 1e-3, f"parameters differ from the authors' loop by {diff:.2e} (norm-relative)"
    assert agree == total, f"predictions agree on {agree}/{total}"
    assert adapter.totals["updates"] == ref.updates


def test_deyo_checkpoint_resumes_the_same_trajectory(probe, tmp_path):
    """The permutation generator's state is checkpointed: save after 3 batches, restore into a fresh
    adapter, and the next batches match an uninterrupted run exactly."""
    cfg = load_config(None, method="deyo", method_args={**SGD, "seed": 3}, batch_size=BATCH, engine=ENGINE)
    stream = probe.task.stream(seed=6, batches=5, batch=BATCH)
    whole, first = Adapter(probe.path, cfg), Adapter(probe.path, cfg)
    for x in stream[:3]:
        whole.process(x)
        first.process(x)
    first.save(tmp_path / "ckpt")
    resumed = Adapter(probe.path, cfg)
    resumed.restore(tmp_path / "ckpt")
    for x in stream[3:]:
        a, b = whole.process(x), resumed.process(x)
        np.testing.assert_array_equal(a.logits, b.logits)
    for k in whole.state.trainable:
        np.testing.assert_array_equal(whole.state.params[k], resumed.state.params[k])
    assert whole.totals["updates"] >= 4
