"""Tests for edgetta.data: IDX reader, corruptions, benchmark streams and their cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgetta.data import fashion_mnist as fm
from edgetta.data.corruptions import (
    CORRUPTIONS,
    SEVERITY_PARAMS,
    corrupt,
    severity_params,
    severity_table_markdown,
)
from edgetta.data.streams import (
    cached_stream,
    clean,
    continual,
    episodic,
    label_sorted,
    mixed,
    save_stream,
)
from edgetta.errors import DataError
from edgetta.streams import ArraySource, NpzSource
from tests.blocking import run_blocking

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = fm.default_root()
needs_real_data = pytest.mark.skipif(
    not (REAL_ROOT / "t10k-images-idx3-ubyte.gz").is_file() and not (REAL_ROOT / "t10k-images-idx3-ubyte").is_file(),
    reason=f"Fashion-MNIST not found in {REAL_ROOT} (apt-get install -y dataset-fashion-mnist)",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        if gz:
            (root / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(data))
        else:
            (root / f"{prefix}-{kind}").write_bytes(data)


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """Small image batch: real test images when installed, else a synthetic garment-like batch."""
    try:
        images, labels = fm.load_fashion_mnist("test")
        return images[:64], labels[:64]
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:28, :28]
        blobs = ((yy - 14) ** 2 / 90 + (xx - 14) ** 2 / 40 < 1).astype(np.float64)
        images = (blobs[None] * rng.uniform(120, 250, (64, 1, 1))).astype(np.uint8)
        return images, rng.integers(0, 10, 64)


# ----------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    _write_split(tmp_path, "t10k", images, labels, gz)
    got_images, got_labels = fm.load_fashion_mnist("test", root=tmp_path)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    _write_split(tmp_path, "train", images, np.array([3, 4], dtype=np.uint8), gz=True)
    monkeypatch.setenv(fm.ENV_ROOT, str(tmp_path))
    _, labels = fm.load_fashion_mnist("train")
    assert labels.tolist() == [3, 4]


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="magic"):
        fm.read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)  # float IDX
    with pytest.raises(ValueError, match="unsigned byte"):
        fm.read_idx(path)


def test_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(_idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-10])
    with pytest.raises(ValueError, match="payload"):
        fm.read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"not a gzip stream at all")
    with pytest.raises(ValueError):
        fm.read_idx(path)


def test_missing_dir_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="root="):
        fm.load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("validation", root=tmp_path)


def test_to_model_input() -> None:
    images = np.array([[[0, 255]]], dtype=np.uint8).repeat(28, axis=1)
    x = fm.to_model_input(images)
    assert x.dtype == np.float32 and x.shape == (1, 1, 28, 2)
    np.testing.assert_allclose(x[0, 0, 0], [-fm.MEAN / fm.STD, (1 - fm.MEAN) / fm.STD], rtol=1e-6)
    assert len(fm.CLASS_NAMES) == 10


@needs_real_data
def test_real_dataset() -> None:
    images, labels = fm.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert abs(images.mean() / 255 - fm.MEAN) < 0.01


# ------------------------------------------------------------------------------------ corruptions


def test_table_complete() -> None:
    assert set(SEVERITY_PARAMS) == set(CORRUPTIONS) and len(CORRUPTIONS) == 15
    assert all(len(v) == 5 for v in SEVERITY_PARAMS.values())


def test_docs_table_in_sync() -> None:
    docs = (REPO / "docs" / "corruptions.md").read_text()
    assert severity_table_markdown() in docs


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption(name: str, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images = sample[0][:32]
    deviation = []
    for severity in range(1, 6):
        out = corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert not np.array_equal(out, images), f"{name} severity {severity} left the images unchanged"
        np.testing.assert_array_equal(out, corrupt(images, name, severity, seed=3))
        deviation.append(np.abs(out.astype(np.float64) - images).mean())
    if name != "elastic_transform":  # its severity-1 affine jitter is the largest (as in the reference table)
        assert deviation[4] > deviation[0], f"{name}: {deviation}"


def test_seed_changes_random_corruptions(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images = sample[0][:8]
    for name in ("gaussian_noise", "glass_blur", "motion_blur", "snow", "frost", "fog", "elastic_transform"):
        assert not np.array_equal(corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1)), name


def test_severity_mostly_monotone(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images = sample[0][:32]
    increasing = 0
    for name in CORRUPTIONS:
        low = np.abs(corrupt(images, name, 1, 0).astype(np.float64) - images).mean()
        high = np.abs(corrupt(images, name, 5, 0).astype(np.float64) - images).mean()
        increasing += high > low
    assert increasing >= 13


def test_corrupt_validation(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images = sample[0][:2]
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(images, "rain", 1, 0)
    with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
        corrupt(images, "fog", 6, 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.astype(np.float32), "fog", 1, 0)
    with pytest.raises(ValueError, match="shape"):
        corrupt(images[0], "fog", 1, 0)
    assert severity_params("pixelate", 5) == {"factor": 0.65}


def test_batch_independence(sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Deterministic operators do not mix images of a batch."""
    images = sample[0][:6]
    for name in ("defocus_blur", "zoom_blur", "pixelate", "jpeg_compression", "contrast"):
        together = corrupt(images, name, 4, 0)
        alone = np.concatenate([corrupt(images[i : i + 1], name, 4, 0) for i in range(len(images))])
        np.testing.assert_array_equal(together, alone, err_msg=name)


# ---------------------------------------------------------------------------------------- streams


def test_stream_builders(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample[0][:40], sample[1][:40]
    s = episodic(images, labels, "fog", 5)
    assert s.x.shape == (40, 1, 28, 28) and s.x.dtype == np.float32
    assert s.y.dtype == np.int64 and (s.domain == CORRUPTIONS.index("fog")).all()
    np.testing.assert_array_equal(s.y, labels)

    c = continual(images, labels, 3, limit_per_domain=10)
    assert len(c.y) == 150 and c.domain.dtype == np.int64
    np.testing.assert_array_equal(c.domain, np.repeat(np.arange(15), 10))
    np.testing.assert_array_equal(c.x, continual(images, labels, 3, limit_per_domain=10).x)

    m = mixed(images, labels, 3, limit_per_domain=10)
    assert sorted(m.domain.tolist()) == sorted(c.domain.tolist())
    assert not np.array_equal(m.domain, c.domain)

    ls = label_sorted(images, labels, "snow", 5)
    assert (np.diff(ls.y) >= 0).all() and sorted(ls.y.tolist()) == sorted(labels.tolist())
    cl = clean(images, labels, limit_per_domain=7)
    assert len(cl.y) == 7 and (cl.domain == -1).all()
    assert cl.x.max() <= (1 - fm.MEAN) / fm.STD + 1e-5

    with pytest.raises(ValueError, match="valid names"):
        episodic(images, labels, "rain", 1)


def test_stream_subset_consistent(sample: tuple[np.ndarray, np.ndarray]) -> None:
    """limit_per_domain picks the same samples (labels) for a domain whatever stream contains it."""
    images, labels = sample
    e = episodic(images, labels, "brightness", 2, limit_per_domain=12, seed=5)
    c = continual(images, labels, 2, limit_per_domain=12, seed=5)
    np.testing.assert_array_equal(c.x[c.domain == CORRUPTIONS.index("brightness")], e.x)


def test_stream_cache(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = sample[0][:20], sample[1][:20]
    s = continual(images, labels, 5, limit_per_domain=4)
    path = save_stream(tmp_path / "s.npz", s)
    with np.load(path) as stored:
        assert "pixels" in stored.files and stored["pixels"].dtype == np.uint8  # compact storage
        assert "x" not in stored.files and float(stored["pixel_mean"]) == pytest.approx(fm.MEAN)
    back = NpzSource(path)
    for key in ("x", "y", "domain"):
        np.testing.assert_array_equal(getattr(back, key), getattr(s, key))
        assert getattr(back, key).dtype == getattr(s, key).dtype

    monkeypatch.setenv("EDGETTA_CACHE", str(tmp_path / "cache"))
    first = cached_stream("episodic", images, labels, name="fog", severity=4)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    second = cached_stream("episodic", images, labels, name="fog", severity=4)
    np.testing.assert_array_equal(first.x, second.x)
    cached_stream("episodic", images, labels, name="fog", severity=3)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    arbitrary = ArraySource(
        np.linspace(-1, 1, 2 * 784, dtype=np.float32).reshape(2, 1, 28, 28), np.array([1, 2]), np.array([-1, -1])
    )
    path = save_stream(tmp_path / "f.npz", arbitrary)
    with np.load(path) as stored:
        assert "x" in stored.files and "pixels" not in stored.files  # not images: stored as they are
    np.testing.assert_array_equal(NpzSource(path).x, arbitrary.x)

    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="no array 'x'"):
        NpzSource(tmp_path / "bad.npz")


def test_cached_stream_is_a_source_with_file_positions(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample[0][:6], sample[1][:6]
    src = cached_stream("clean", images, labels, cache=tmp_path)
    items = list(src)
    assert len(items) == 6 and str(items[2].position).endswith(".npz:2") and items[2].domain == -1
    assert items[2].label == int(labels[2])


def test_corruptions_import_scipy_only_when_used() -> None:
    """A plain install (no bench extra) can import the data package; using a scipy corruption says what
    to install."""
    result = run_blocking(
        "import numpy as np\n"
        "import edgetta.data.corruptions as c, edgetta.data.streams\n"
        "images = np.zeros((2, 28, 28), np.uint8)\n"
        "c.corrupt(images, 'gaussian_noise', 3)  # numpy only\n"
        "try:\n"
        "    c.corrupt(images, 'defocus_blur', 3)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "    rc = 0\n",
        blocked=("scipy", "torch", "matplotlib"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install 'edgetta[bench]'" in result.stdout
