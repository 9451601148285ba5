"""CoTTA: the runtime's ``cotta`` against a torch transcription of the authors' released loop restricted to
the norm affine parameters (tests/reference_tta.py ``CottaReference``) on the linear-probe BN ResNet, with the
same augmentations (a replica generator) and the same stochastic-restore masks: the anchor gate averages the
same batches, the predictions (the teacher's) agree on every sample, the student and the EMA teacher agree
to float32 noise after the stream. A contract-v1 artifact is refused with a re-export hint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetta.errors import ArtifactError, ConfigError
from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import load_config
from edgetta.runtime.methods.cotta import augment

ENGINE = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
BUNDLED_V1 = Path(__file__).resolve().parents[1] / "edgetta" / "assets" / "fmnist_resnet_bn"
BATCHES, BATCH = 12, 32
# anchor confidences of this stream lie in 0.58-0.75: about half the batches average the augmented teacher
AUG = {"n_augmentations": 3, "max_shift": 2, "flip": True, "noise_std": 0.1, "seed": 5}
ARGS = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "ema": 0.9, "ap": 0.66, **AUG}
RESTORE_P = 0.05


def test_augment_shifts_flips_and_adds_noise_reproducibly():
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float32).reshape(2, 1, 4, 5)
    a = augment(x, np.random.default_rng(3), 1, True, 0.0)
    b = augment(x, np.random.default_rng(3), 1, True, 0.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(augment(x, np.random.default_rng(3), 0, False, 0.0), x)
    # a shift keeps the edge values: every output value is one of the input's values of that sample
    for i in range(2):
        assert set(np.unique(a[i])) <= set(np.unique(x[i]))
    noisy = augment(x, np.random.default_rng(3), 0, False, 0.5)
    assert 0.3 < float(np.std(noisy - x)) < 0.7
    signal = augment(np.arange(6, dtype=np.float32).reshape(1, 1, 6), np.random.default_rng(0), 2, False, 0.0)
    assert signal.shape == (1, 1, 6)


def test_cotta_arguments_are_checked():
    for bad, key in (({"ema": 1.0}, "ema"), ({"ap": 1.5}, "ap"), ({"n_augmentations": -1}, "n_augmentations")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, method="cotta", method_args=bad)


def test_cotta_refuses_a_contract_v1_artifact():
    cfg = load_config(preset="cotta", engine=ENGINE)  # the bundled preset loads
    with pytest.raises(ArtifactError, match=r"soft_target.*version 1.*re-export it with edgetta >="):
        Adapter(BUNDLED_V1, cfg)


# -- parity with the authors' loop ----------------------------------------------------------------------

torch = pytest.importorskip("torch")

from tests.parity_models import Probed, export_probe  # noqa: E402
from tests.reference_tta import CottaReference  # noqa: E402


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Probed:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield export_probe(tmp_path_factory.mktemp("cotta") / "probe", size=16, calib=None)
    torch.set_num_threads(threads)


def _flat(values: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(values[k]).ravel() for k in names]).astype(np.float64)


def test_cotta_matches_the_authors_loop(probe):
    rails = ["nonfinite_guard", {"name": "stochastic_restore", "p": RESTORE_P}]
    cfg = load_config(None, method="cotta", method_args=ARGS, rails=rails, batch_size=BATCH, engine=ENGINE)
    adapter = Adapter(probe.path, cfg)
    replica = np.random.default_rng(AUG["seed"])
    ref = CottaReference(
        probe.model,
        augment=lambda a: augment(a, replica, AUG["max_shift"], AUG["flip"], AUG["noise_std"]),
        n_augmentations=AUG["n_augmentations"],
        ema=ARGS["ema"],
        ap=ARGS["ap"],
        restore_p=RESTORE_P,
        restore_rng=np.random.default_rng([cfg.seed, 0]),  # the rail's generator: (env seed, rail seed 0)
        optimizer="sgd",
        lr=ARGS["lr"],
        momentum=ARGS["momentum"],
    )
    names = list(adapter.state.trainable)
    assert names == list(ref.params)
    source = _flat(adapter.state.source, names)
    agree = total = restores = 0
    worst_logit = 0.0
    for x in probe.task.stream(seed=2, batches=BATCHES, batch=BATCH):
        res = adapter.process(x)
        logits = ref.forward_and_adapt(torch.from_numpy(x)).numpy()
        agree += int(np.sum(res.preds == logits.argmax(1)))
        total += len(x)
        worst_logit = max(worst_logit, float(np.abs(res.logits - logits).max()))
        restores += sum(1 for e in res.events if e.rail == "stochastic_restore")
    method = adapter.method
    rt, want = _flat(adapter.state.params, names), _flat(ref.params_numpy(), names)
    teacher_rt, teacher_want = _flat(method.teacher, names), _flat(ref.teacher_numpy(), names)
    diff = np.linalg.norm(rt - want) / np.linalg.norm(want)
    teacher_diff = np.linalg.norm(teacher_rt - teacher_want) / np.linalg.norm(teacher_want)
    moved = np.linalg.norm(want - source) / np.linalg.norm(source)
    teacher_moved = np.linalg.norm(teacher_want - source) / np.linalg.norm(source)
    print(
        f"\n[cotta] param diff {diff:.2e} (moved {moved:.2e}), teacher diff {teacher_diff:.2e} "
        f"(moved {teacher_moved:.2e}), logit max diff {worst_logit:.2e}, agreement {agree}/{total}, "
        f"augmented {method.augmented_batches}/{BATCHES}, restore events {restores}, totals {dict(adapter.totals)}"
    )
    assert method.augmented_batches == ref.augmented, "the anchor gate averaged other batches than the authors' loop"
    assert 0 < ref.augmented < BATCHES, "both teacher branches must run: weak test"
    assert restores == BATCHES, "stochastic restore should act on every batch at p = 0.05"
    assert moved >= 1e-2 and teacher_moved >= 1e-3, "the parameters barely moved: weak test"
    assert diff <= 1e-3, f"student differs from the authors' loop by {diff:.2e} (norm-relative)"
    assert teacher_diff <= 1e-3, f"teacher differs from the authors' loop by {teacher_diff:.2e} (norm-relative)"
    assert worst_logit <= 1e-3, f"predictions (teacher logits) differ by {worst_logit:.2e}"
    assert agree == total, f"predictions agree on {agree}/{total}"
    assert adapter.totals["updates"] == ref.updates == BATCHES
    k = AUG["n_augmentations"]
    assert adapter.totals["forward_passes"] == BATCHES * 3 + ref.augmented * k
    assert adapter.totals["backward_passes"] == BATCHES


def test_cotta_checkpoint_resumes_the_same_trajectory(probe, tmp_path):
    """The teacher and the augmentation generator are checkpointed: save after 2 batches, restore into a
    fresh adapter, and the next batches match an uninterrupted run exactly."""
    cfg = load_config(None, method="cotta", method_args=ARGS, batch_size=BATCH, engine=ENGINE)
    stream = probe.task.stream(seed=6, batches=4, batch=BATCH)
    whole, first = Adapter(probe.path, cfg), Adapter(probe.path, cfg)
    for x in stream[:2]:
        whole.process(x)
        first.process(x)
    first.save(tmp_path / "ckpt")
    resumed = Adapter(probe.path, cfg)
    resumed.restore(tmp_path / "ckpt")
    for x in stream[2:]:
        a, b = whole.process(x), resumed.process(x)
        np.testing.assert_array_equal(a.logits, b.logits)
    for k in whole.state.trainable:
        np.testing.assert_array_equal(whole.method.teacher[k], resumed.method.teacher[k])
        np.testing.assert_array_equal(whole.state.params[k], resumed.state.params[k])


def test_the_cotta_preset_runs_on_a_contract_v2_artifact(probe):
    cfg = load_config(preset="cotta", engine=ENGINE, batch_size=BATCH)
    adapter = Adapter(probe.path, cfg)
    for x in probe.task.stream(seed=4, batches=2, batch=BATCH):
        res = adapter.process(x)
        assert np.all(np.isfinite(res.logits))
    assert adapter.totals["updates"] == 2 and adapter.totals["backward_passes"] == 2
    assert any(not np.array_equal(adapter.method.teacher[k], adapter.state.source[k]) for k in adapter.state.trainable)
