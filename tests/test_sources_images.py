"""Image folder sources on real PNG files written with cv2.imwrite: name order, channel order, a corrupt file,
resume by name or index, a watched folder, and the bundled model fed from PNGs exactly as from its arrays."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edgetta

cv2 = pytest.importorskip("cv2", reason="image folder sources need OpenCV: pip install 'edgetta[daemon]'")

from edgetta import Adapter, load_config  # noqa: E402
from edgetta.contract import load_artifact  # noqa: E402
from edgetta.errors import ConfigError, DataError  # noqa: E402
from edgetta.streams import Collector, open_source, run_stream  # noqa: E402
from edgetta.streams.npz import pixels_to_inputs  # noqa: E402

ASSETS = Path(edgetta.__file__).parent / "assets"
BN_ART = ASSETS / "fmnist_resnet_bn"
RGB_ART = SimpleNamespace(input_shape=(None, 3, 8, 8), preprocess={"scale": 1 / 255})
COLOURS = {  # name -> (R, G, B)
    "img_00.png": (200, 100, 30),
    "img_01.png": (10, 220, 130),
    "img_02.png": (90, 40, 250),
    "img_03.png": (0, 0, 0),
    "img_05.png": (255, 128, 64),
}


@pytest.fixture()
def folder(tmp_path) -> Path:
    for name, (r, g, b) in COLOURS.items():
        image = np.zeros((12, 16, 3), np.uint8)
        image[:] = (b, g, r)  # OpenCV writes BGR
        assert cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "img_04.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(100)))  # corrupt
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes((tmp_path / "img_00.png").read_bytes())
    return tmp_path


def test_folder_in_name_order_with_rgb_channels_and_a_corrupt_file(folder):
    source = open_source({"kind": "images", "path": str(folder)}, stream="s", artifact=RGB_ART)
    assert source.live is False and source.total == 6
    items = list(source)
    assert [it.position for it in items] == [f"img_0{i}.png" for i in range(6)]
    bad = items[4]
    assert bad.x is None and "img_04.png" in bad.error and "decode" in bad.error
    for item in items[:4] + items[5:]:
        r, g, b = COLOURS[item.position]
        assert item.x.shape == (3, 8, 8) and item.x.dtype == np.float32
        np.testing.assert_array_equal(item.x[:, 0, 0], np.float32([r, g, b]) * np.float32(1 / 255))


def test_bgr_order_when_the_model_wants_it(folder):
    spec = {"kind": "images", "path": str(folder), "preprocess": {"color": "bgr", "scale": 1.0}}
    item = next(iter(open_source(spec, stream="s", artifact=RGB_ART)))
    np.testing.assert_array_equal(item.x[:, 0, 0], [30, 100, 200])


@pytest.mark.parametrize(
    ("kwargs", "first"),
    [({"start": "img_03.png"}, 3), ({"after": "img_03.png"}, 4), ({"start": 2}, 2), ({"start": "img_025"}, 3)],
)
def test_resume_by_name_or_index(folder, kwargs, first):
    source = open_source({"kind": "images", "path": str(folder)}, stream="s", artifact=RGB_ART, **kwargs)
    names = [it.position for it in source]
    assert names == [f"img_0{i}.png" for i in range(first, 6)]
    assert source.total == 6 - first


def test_watched_folder_picks_up_new_files(folder):
    spec = {"kind": "images", "path": str(folder), "watch": True, "poll": 0.05}
    source = open_source(spec, stream="s", artifact=RGB_ART, after="img_05.png")
    assert source.live is True and source.total is None
    got: queue.Queue = queue.Queue()
    thread = threading.Thread(target=lambda: [got.put(it) for it in source], daemon=True)
    thread.start()
    time.sleep(0.2)
    assert got.empty()  # everything up to img_05.png was done before
    image = np.zeros((12, 16, 3), np.uint8)
    image[:] = (1, 2, 3)
    assert cv2.imwrite(str(folder / "img_06.png"), image)
    (folder / "img_06.txt").write_text("ignored")
    item = got.get(timeout=5)
    assert item.position == "img_06.png"
    np.testing.assert_array_equal(item.x[:, 0, 0], np.float32([3, 2, 1]) * np.float32(1 / 255))
    source.close()
    thread.join(5)
    assert not thread.is_alive() and got.empty()


def test_bundled_model_from_png_files_matches_its_arrays(tmp_path):
    """Fashion-MNIST images written as PNG and read back through the manifest's preprocessing give the model the
    inputs (within float32 rounding) and predictions of the same images as arrays."""
    with np.load(ASSETS / "demo_stream.npz") as data:
        pixels = data["images"][:48]
    for i, image in enumerate(pixels):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), image)
    artifact = load_artifact(BN_ART)
    spec = {"kind": "images", "path": str(tmp_path)}
    expected = pixels_to_inputs(pixels, 0.286, 0.353)
    np.testing.assert_allclose(
        np.stack([it.x for it in open_source(spec, stream="s", artifact=artifact)]), expected, atol=1e-6
    )
    config = load_config(method="frozen")
    from_arrays = Adapter(BN_ART, config).process(expected)
    from_png = Collector()
    run_stream(Adapter(BN_ART, config), open_source(spec, stream="s", artifact=artifact), [from_png], batch_size=16)
    assert [r.pred for r in from_png.records] == [int(p) for p in from_arrays.preds]


def test_folder_errors(tmp_path, folder):
    with pytest.raises(DataError, match="does not exist"):
        open_source({"kind": "images", "path": str(tmp_path / "nope")}, stream="s", artifact=RGB_ART)
    with pytest.raises(ConfigError, match=r"streams\[s\]\.source\.poll: only applies with watch: true"):
        open_source({"kind": "images", "path": str(folder), "poll": 1}, stream="s", artifact=RGB_ART)
    with pytest.raises(DataError, match="start index 9"):
        open_source({"kind": "images", "path": str(folder)}, stream="s", artifact=RGB_ART, start=9)
