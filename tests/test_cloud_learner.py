"""The CEMA learner: what it may change, its loss against a hand computation, and that distillation from the
demo teacher makes the bundled edge model better on a shifted Fashion-MNIST-C stream."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetta.cloud.demo import fmnist_student, fmnist_teacher  # noqa: E402
from edgetta.cloud.learner import CemaConfig, CemaLearner, cema_loss, teacher_loss  # noqa: E402
from edgetta.cloud.student import build_student  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402

ARTIFACT = Path(__file__).resolve().parents[1] / "edgetta" / "assets" / "fmnist_resnet_bn"


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


def test_distilled_student_beats_frozen_and_bn_on_shifted_stream(artifact, edge_model):
    """Fog (severity 4), where normalising with batch statistics alone recovers least: uploads of 64 from a
    512-image stream, accuracy on 512 held-out images of the same shift. The edge model normalises with
    batch statistics as CEMA's edge does; "bn" is that without any bundle (forward-only adaptation)."""
    from edgetta.data.corruptions import corrupt

    images, labels = load_fashion_mnist("test")
    pick = np.random.default_rng(1).permutation(len(images))[:1024]
    x = to_model_input(corrupt(images[pick], "fog", 4, seed=1))
    stream, held_x, held_y = x[:512], torch.from_numpy(x[512:]), labels[pick][512:]

    def predict(params=None, batch_stats=True, model=edge_model) -> np.ndarray:
        model = copy.deepcopy(model)
        if params:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=False)
        model.eval()
        for module in model.modules():
            if batch_stats and isinstance(module, torch.nn.BatchNorm2d):
                module.train()
        with torch.no_grad():
            return torch.cat([model(held_x[i : i + 64]).argmax(1) for i in range(0, len(held_x), 64)]).numpy()

    learner = CemaLearner(fmnist_teacher(), copy.deepcopy(edge_model), artifact, CemaConfig())  # paper defaults
    for i in range(0, len(stream), 64):
        learner.add(stream[i : i + 64])
        while learner.step():
            pass
    assert learner.steps == 512 // 32
    teacher = predict(model=learner.teacher)
    frozen, bn, cema = predict(batch_stats=False), predict(), predict(learner.params())
    accuracy = {name: float((p == held_y).mean()) for name, p in [("frozen", frozen), ("bn", bn), ("cema", cema)]}
    agreement = {name: float((p == teacher).mean()) for name, p in [("bn", bn), ("cema", cema)]}
    print(f"fog-4 accuracy {accuracy}, teacher {float((teacher == held_y).mean()):.3f}; agreement {agreement}")
    assert accuracy["cema"] > accuracy["frozen"] + 0.2
    assert accuracy["cema"] > accuracy["bn"] + 0.02
    assert agreement["cema"] > agreement["bn"] + 0.015  # the student moved towards its teacher


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch with one thread: several times faster than two on busy shared cores; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_student_must_reproduce_the_artifact(artifact, edge_model):
    from edgetta.cloud.student import check_parity
    from edgetta.errors import ArtifactError

    assert check_parity(edge_model, artifact) < 1e-4
    weights = {k: v.clone() for k, v in edge_model.state_dict().items()}
    weights["layer2.0.conv1.weight"] += 0.05  # a different network than the one exported
    with pytest.raises(ArtifactError, match="differs from"):
        build_student(fmnist_student(), artifact, weights)
    from edgetta.zoo.models import resnet_bn

    with pytest.raises(ArtifactError, match="no weight of shape"):  # a SPEC of another architecture
        build_student(resnet_bn(in_channels=1, num_classes=10, width=8, blocks=1), artifact)
