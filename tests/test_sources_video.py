"""Video sources on a real MJPG file written with cv2.VideoWriter: frames, manifest preprocessing, exact resume,
damaged files, and the live source's reconnects (a file stands in for a camera whose stream ends)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgetta

cv2 = pytest.importorskip("cv2", reason="video sources need OpenCV: pip install 'edgetta[daemon]'")

from edgetta.contract import load_artifact  # noqa: E402
from edgetta.errors import DataError  # noqa: E402
from edgetta.streams import Backoff, LiveVideoSource, VideoFileSource, open_source  # noqa: E402
from edgetta.streams.preprocess import image_preprocessor  # noqa: E402

BN_ART = Path(edgetta.__file__).parent / "assets" / "fmnist_resnet_bn"
N_FRAMES, SIDE = 40, 56


def frame_content(i: int) -> np.ndarray:
    """Frame i: 8x8 blocks (JPEG blocks, so MJPG keeps them within a grey level) of i-dependent grey values."""
    blocks = (20 + 5 * i + 7 * (np.arange(49) % 5)).astype(np.uint8).reshape(7, 7)
    return np.kron(blocks, np.ones((8, 8), np.uint8))


@pytest.fixture(scope="module")
def artifact():
    return load_artifact(BN_ART)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIDE, SIDE))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(cv2.cvtColor(frame_content(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def full_run(video, artifact) -> list:
    return list(open_source({"kind": "video", "path": str(video)}, stream="cam", artifact=artifact))


def manifest_expectation(i: int) -> np.ndarray:
    """What the manifest (scale 1/255, mean 0.286, std 0.353) and the model's 28x28 make of frame i, by hand:
    56 -> 28 by averaging 2x2 pixels (equal within a block), then (v / 255 - mean) / std."""
    small = frame_content(i)[::2, ::2].astype(np.float64)
    return ((small / 255 - 0.286) / 0.353)[None].astype(np.float32)


def test_video_file_frames_follow_the_manifest(full_run):
    assert [it.position for it in full_run] == list(range(N_FRAMES))
    assert all(it.error is None for it in full_run)
    for i, item in enumerate(full_run):
        assert item.x.shape == (1, 28, 28) and item.x.dtype == np.float32
        # MJPG keeps a constant 8x8 block within one grey level: 1 / 255 / 0.353 = 0.0111 in model units
        np.testing.assert_allclose(item.x, manifest_expectation(i), atol=1.2 / 255 / 0.353)


def test_video_file_metadata(video, artifact):
    source = open_source({"kind": "video", "path": str(video)}, stream="cam", artifact=artifact, start=5)
    assert source.live is False and source.kind == "video"
    assert source.total == N_FRAMES - 5
    assert source.preprocessor.state() == {}


@pytest.mark.parametrize("seek", ["auto", "decode"])
def test_video_resume_yields_exactly_the_remaining_frames(video, artifact, full_run, seek):
    spec = {"kind": "video", "path": str(video), "seek": seek}
    for kwargs in ({"start": 17}, {"after": 16}):
        source = open_source(spec, stream="cam", artifact=artifact, **kwargs)
        resumed = list(source)
        assert source.seek_used == ("seek" if seek == "auto" else "decode")
        assert [it.position for it in resumed] == list(range(17, N_FRAMES))
        for got, want in zip(resumed, full_run[17:]):
            np.testing.assert_array_equal(got.x, want.x)


def test_video_resume_at_the_end_yields_nothing(video, artifact):
    assert list(open_source({"kind": "video", "path": str(video)}, stream="c", artifact=artifact, start=N_FRAMES)) == []


def _jpeg_starts(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]


def test_corrupt_frame_is_an_error_item_and_the_stream_goes_on(video, artifact, full_run, tmp_path):
    data = bytearray(video.read_bytes())
    start = _jpeg_starts(bytes(data))[10]
    data[start : start + 200] = bytes(range(200))  # frame 10's JPEG header destroyed
    bad = tmp_path / "corrupt.avi"
    bad.write_bytes(bytes(data))
    items = list(open_source({"kind": "video", "path": str(bad)}, stream="cam", artifact=artifact))
    assert [it.position for it in items] == list(range(N_FRAMES))
    assert [it.position for it in items if it.error] == [10]
    assert items[10].x is None and "frame 10" in items[10].error
    for got, want in zip(items[11:], full_run[11:]):
        np.testing.assert_array_equal(got.x, want.x)


def test_truncated_file_ends_cleanly_after_a_few_error_items(video, artifact, full_run, tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    items = list(open_source({"kind": "video", "path": str(cut), "max_bad_frames": 3}, stream="c", artifact=artifact))
    good = [it for it in items if it.error is None]
    bad = [it for it in items if it.error is not None]
    assert 5 <= len(good) < N_FRAMES
    assert [it.position for it in good] == list(range(len(good)))
    assert len(bad) == 3 and [it.position for it in bad] == [len(good), len(good) + 1, len(good) + 2]
    for got, want in zip(good, full_run):
        np.testing.assert_array_equal(got.x, want.x)


def test_unreadable_file_is_one_error_item_and_a_missing_one_an_error(tmp_path, artifact):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(bytes(range(256)) * 20)
    items = list(open_source({"kind": "video", "path": str(junk)}, stream="c", artifact=artifact))
    assert len(items) == 1 and items[0].x is None and "not a video OpenCV can open" in items[0].error
    with pytest.raises(DataError, match="does not exist"):
        open_source({"kind": "video", "path": str(tmp_path / "nope.avi")}, stream="c", artifact=artifact)


def test_live_source_reconnects_and_keeps_counting(video, artifact, full_run):
    """A stream that ends (the file standing in for an RTSP server that drops us) is reopened with backoff; the
    frame counter continues, so positions stay unique; after= continues a previous run's counter."""
    events: list[tuple[str, str]] = []
    prep = image_preprocessor(None, artifact)
    source = LiveVideoSource(
        str(video),
        prep,
        kind="rtsp",
        backoff=Backoff(initial=0.01, maximum=0.02),
        after=999,
        on_event=lambda k, m: events.append((k, m)),
    )
    assert source.live is True and source.total is None
    items = []
    for item in source:
        items.append(item)
        if len(items) == 2 * N_FRAMES + 5:
            source.close()
    assert [it.position for it in items] == list(range(1000, 1000 + 2 * N_FRAMES + 5))
    np.testing.assert_array_equal(items[N_FRAMES + 3].x, full_run[3].x)  # second connection starts at frame 0
    assert source.connects == 3
    assert [k for k, _ in events].count("disconnected") == 2


def test_live_source_gives_up_after_the_configured_attempts(tmp_path, artifact):
    events: list[str] = []
    spec = {"kind": "rtsp", "url": "rtsp://user:secret@127.0.0.1:1/none", "open_timeout": 0.5}
    spec["reconnect"] = {"initial": 0.01, "max": 0.05, "attempts": 2}
    source = open_source(spec, stream="cam", artifact=artifact, on_event=lambda k, m: events.append(k))
    assert "secret" not in source.name and source.live is True
    started = time.monotonic()
    items = list(source)
    assert time.monotonic() - started < 10
    assert len(items) == 1 and items[0].x is None and "gave up after 2" in items[0].error
    assert events == ["open_failed", "open_failed", "gave_up"]


def test_close_stops_a_live_source_waiting_to_reconnect(tmp_path, artifact):
    prep = image_preprocessor(None, artifact)
    source = LiveVideoSource(str(tmp_path / "missing.avi"), prep, kind="rtsp", backoff=Backoff(initial=30, maximum=30))
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(source), daemon=True)
    thread.start()
    time.sleep(0.3)
    source.close()
    thread.join(5)
    assert not thread.is_alive() and got == []


def test_video_class_rejects_a_bad_start(video, artifact):
    with pytest.raises(DataError, match="start"):
        VideoFileSource(video, image_preprocessor(None, artifact), start=-1)
