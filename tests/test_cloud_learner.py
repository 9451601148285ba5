"""The CEMA learner: what it may change, its loss against a hand computation, and that distillation from the
demo teacher makes the bundled edge model better on a shifted Fashion-MNIST-C stream."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetta.cloud.demo import fmnist_student, fmnist_teacher  # noqa: E402
from edgetta.cloud.learner import CemaConfig, CemaLearner, cema_loss, teacher_loss  # noqa: E402
from edgetta.cloud.student import build_student  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402

ARTIFACT = "edgetta/assets/fmnist_resnet_bn"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_loss_terms_match_hand_computation():
    s = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    e_max = 0.4 * math.log(3)
    ps, pt = _softmax(s), _softmax(t)
    h_s = -(ps * np.log(ps)).sum(1)
    h_t = -(pt * np.log(pt)).sum(1)
    w_s, w_t = 1 / np.exp(h_s - e_max), 1 / np.exp(h_t - e_max)
    ent = np.mean(w_s * h_s)
    kl = np.mean(w_t * (pt * (np.log(pt) - np.log(ps))).sum(1))
    ce = np.mean(w_t * -np.log(ps[[0, 1], t.argmax(1)]))
    total, parts = cema_loss(torch.tensor(s), torch.tensor(t), e_max)  # the paper's weights 3, 3, 1
    assert parts["entropy"] == pytest.approx(ent, rel=1e-6)
    assert parts["kl"] == pytest.approx(kl, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert float(total) == pytest.approx(3 * ent + 3 * kl + 1 * ce, rel=1e-6)
    assert float(teacher_loss(torch.tensor(t), e_max)) == pytest.approx(np.mean(w_t * h_t), rel=1e-6)
    # temperature T: both distributions softened, KL scaled by T^2
    _, warm = cema_loss(torch.tensor(s), torch.tensor(t), e_max, temperature=2.0)
    ps2, pt2 = _softmax(s / 2), _softmax(t / 2)
    assert warm["kl"] == pytest.approx(np.mean(w_t * (pt2 * (np.log(pt2) - np.log(ps2))).sum(1)) * 4, rel=1e-6)


@pytest.fixture(scope="module")
def artifact():
    return load_artifact(ARTIFACT)


@pytest.fixture(scope="module")
def edge_model(artifact):
    """The bundled edge model in torch, rebuilt from its artifact (and checked against infer.onnx)."""
    return build_student(fmnist_student(), artifact)


def test_distillation_changes_only_norm_affine_parameters(artifact, edge_model):
    student = copy.deepcopy(edge_model)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = fmnist_student()  # any teacher will do here
    config = CemaConfig(batch_size=8, replay_start=16, student_lr=0.05, teacher_lr=0.05)
    learner = CemaLearner(teacher, student, artifact, config)
    rng = np.random.default_rng(0)
    for _ in range(3):
        learner.add(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
        assert learner.step()
    assert not learner.step()  # no new batch pending
    assert learner.replay_step()  # the buffer holds 24 > 16: a replay-only step
    after = student.state_dict()
    affine = set(artifact.trainable_names)
    stats = {n for layer in artifact.norm_layers for n in (layer.running_mean, layer.running_var) if n}
    for name, value in after.items():
        changed = not torch.equal(value, before[name])
        if name in affine or name in stats:
            assert changed, f"{name} did not move"
        elif name.endswith("num_batches_tracked"):
            continue
        else:
            assert not changed, f"{name} is not a norm affine parameter but changed"
    published = learner.params()
    assert set(published) == affine | stats
    assert all(v.dtype == np.float32 for v in published.values())


@pytest.mark.parametrize("corruption", ["gaussian_noise"])
def test_distilled_student_beats_frozen_on_shifted_stream(artifact, edge_model, corruption):
    from edgetta.data.corruptions import corrupt

    images, labels = load_fashion_mnist("test")
    pick = np.random.default_rng(1).permutation(len(images))[:1024]
    x = to_model_input(corrupt(images[pick], corruption, 5, seed=1))
    y = labels[pick]
    stream, held_out = x[:512], (x[512:], y[512:])

    def accuracy(model, params=None) -> float:
        model = copy.deepcopy(model)
        if params:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=False)
        model.eval()
        with torch.no_grad():
            return float((model(torch.from_numpy(held_out[0])).argmax(1).numpy() == held_out[1]).mean())

    def run(student_lr: float) -> dict:
        learner = CemaLearner(fmnist_teacher(), copy.deepcopy(edge_model), artifact, CemaConfig(student_lr=student_lr))
        for i in range(0, len(stream), 64):  # uploads of 64
            learner.add(stream[i : i + 64])
            while learner.step():
                pass
        return learner.params()

    frozen = accuracy(edge_model)
    stats_only = accuracy(edge_model, run(student_lr=0.0))  # the bundle's BN statistics, no distillation
    distilled = accuracy(edge_model, run(student_lr=CemaConfig().student_lr))
    print(f"{corruption}-5: frozen {frozen:.3f}, statistics only {stats_only:.3f}, CEMA {distilled:.3f}")
    assert distilled > frozen + 0.05
    assert distilled > stats_only + 0.01
