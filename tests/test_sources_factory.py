"""open_source: one source per spec kind, every key validated with a ConfigError naming streams[<s>].source.<key>,
resume positions per kind, the live flag, .npy/.npz arrays, missing optional libraries, and a light import."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edgetta.errors import ConfigError, DataError
from edgetta.streams import KINDS, MissingExtra, open_source

IMAGE = SimpleNamespace(input_shape=(None, 1, 8, 8), preprocess={"scale": 1 / 255})
SIGNAL = SimpleNamespace(input_shape=(None, 1, 3000), preprocess={})
W = re.escape("streams[s].source")


def err(spec, artifact=IMAGE, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        open_source(spec, stream="s", artifact=artifact, **kwargs)
    return str(info.value)


def test_kind_is_checked_first():
    assert KINDS == ("video", "camera", "rtsp", "images", "edf", "lsl", "npz", "npy")
    assert err({"path": "x"}) == "streams[s].source.kind: must be one of " + ", ".join(KINDS) + ", got None"
    assert "got 'webcam'" in err({"kind": "webcam"})
    assert err(["video"]).startswith("streams[s].source: must be a mapping with a 'kind'")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "video", "path": "a.avi", "fps": 5}, rf"{W}\.fps: unknown key; allowed here: kind, max_bad_frames"),
        ({"kind": "video"}, rf"{W}: missing key 'path' \(the video file\)"),
        ({"kind": "video", "path": "a.avi", "seek": "fast"}, rf"{W}\.seek: must be one of auto, decode"),
        ({"kind": "video", "path": "a.avi", "read_timeout": 0}, rf"{W}\.read_timeout: must be a number > 0"),
        ({"kind": "video", "path": "a.avi", "max_bad_frames": 0}, rf"{W}\.max_bad_frames: must be a whole number >= 1"),
        ({"kind": "camera"}, rf"{W}: missing key 'device' \(a camera index like 0"),
        ({"kind": "camera", "device": "usb"}, rf"{W}\.device: must be a camera index >= 0 or a path under /dev/"),
        ({"kind": "camera", "device": 0, "reconnect": {"tries": 3}}, rf"{W}\.reconnect\.tries: unknown key; allowed"),
        (
            {"kind": "camera", "device": 0, "reconnect": {"initial": -1}},
            rf"{W}\.reconnect\.initial: must be a number >= 0",
        ),
        (
            {"kind": "camera", "device": 0, "reconnect": {"initial": 5, "max": 1}},
            rf"{W}\.reconnect\.max: 1 s is shorter",
        ),
        ({"kind": "camera", "device": 0, "reconnect": {"attempts": 0}}, rf"{W}\.reconnect\.attempts: must be a whole"),
        (
            {"kind": "rtsp", "url": "camera.local/stream"},
            rf"{W}\.url: must be a URL with one of the schemes rtsp, rtsps",
        ),
        ({"kind": "rtsp", "path": "x"}, rf"{W}\.path: unknown key; allowed here: kind, open_timeout, preprocess"),
        ({"kind": "images", "path": "d", "watch": "yes"}, rf"{W}\.watch: must be true or false"),
        ({"kind": "images", "path": "d", "extensions": "png"}, rf"{W}\.extensions: must be a list of file extensions"),
        (
            {"kind": "npz", "path": "a.npz", "preprocess": {}},
            rf"{W}\.preprocess: npz arrays are model inputs as they are",
        ),
        ({"kind": "npy", "path": 3}, rf"{W}\.path: must be the \.npy file, got 3"),
        ({"kind": "video", "path": "a.avi", "preprocess": {"size": 8}}, rf"{W}\.preprocess\.size: unknown key"),
    ],
)
def test_image_and_array_keys_are_checked(spec, message):
    assert re.match(message, err(spec)), err(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"kind": "edf", "path": "a.edf", "channel": "Fpz"},
            rf"{W}\.channel: unknown key; allowed here: channels, kind",
        ),
        ({"kind": "edf", "path": "a.edf", "channels": []}, rf"{W}\.channels: must be a channel label or a list"),
        ({"kind": "edf", "path": "a.edf", "channels": "C3", "pace": 2}, rf"{W}\.pace: must be one of realtime, fast"),
        ({"kind": "lsl"}, rf"{W}: give the LSL stream's name or type"),
        ({"kind": "lsl", "name": "it's"}, rf"{W}\.name: cannot contain a quote"),
        ({"kind": "lsl", "type": "EEG", "buffer": 0}, rf"{W}\.buffer: must be a number >= 1"),
        ({"kind": "lsl", "type": "EEG", "resolve_timeout": "5s"}, rf"{W}\.resolve_timeout: must be a number > 0"),
        ({"kind": "lsl", "type": "EEG", "preprocess": {"zscore": "yes"}}, rf"{W}\.preprocess\.zscore: must be one of"),
    ],
)
def test_signal_keys_are_checked(spec, message):
    pytest.importorskip("scipy.signal")
    assert re.match(message, err(spec, SIGNAL)), err(spec, SIGNAL)


def test_sources_must_fit_the_model():
    assert "image sources give [C, H, W] inputs" in err({"kind": "camera", "device": 0}, SIGNAL)
    assert "signal sources give [channels, samples]" in err({"kind": "lsl", "type": "EEG"}, IMAGE)


def test_live_flag_per_kind(tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("pylsl")
    (tmp_path / "frames").mkdir()
    live = {
        "camera": open_source({"kind": "camera", "device": 0}, stream="s", artifact=IMAGE),
        "rtsp": open_source({"kind": "rtsp", "url": "rtsp://host/x"}, stream="s", artifact=IMAGE),
        "lsl": open_source({"kind": "lsl", "type": "EEG"}, stream="s", artifact=SIGNAL),
        "watched": open_source(
            {"kind": "images", "path": str(tmp_path / "frames"), "watch": True}, stream="s", artifact=IMAGE
        ),
    }
    assert {k: s.live for k, s in live.items()} == dict.fromkeys(live, True)
    folder = open_source({"kind": "images", "path": str(tmp_path / "frames")}, stream="s", artifact=IMAGE)
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), np.float32))
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    arrays = [
        open_source({"kind": k, "path": str(tmp_path / f"x.{k}")}, stream="s", artifact=IMAGE) for k in ("npy", "npz")
    ]
    assert [s.live for s in (folder, *arrays)] == [False, False, False]
    assert [s.kind for s in arrays] == ["npy", "npz"] and [s.preprocessor for s in arrays] == [None, None]
    assert live["camera"].preprocessor.to_json()["output_shape"] == [1, 8, 8]


def test_npy_and_npz_resume_by_row_or_position(tmp_path):
    x = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(6))
    for kind in ("npy", "npz"):
        spec = {"kind": kind, "path": str(tmp_path / f"x.{kind}")}
        whole = list(open_source(spec, stream="s", artifact=None))
        assert [it.position for it in whole] == [f"x.{kind}:{i}" for i in range(6)]
        for kwargs in ({"start": 4}, {"start": f"x.{kind}:4"}, {"after": 3}, {"after": f"x.{kind}:3"}):
            resumed = list(open_source(spec, stream="s", artifact=None, **kwargs))
            assert [it.position for it in resumed] == [f"x.{kind}:4", f"x.{kind}:5"], kwargs
            np.testing.assert_array_equal(resumed[0].x, x[4])
    with pytest.raises(ConfigError, match="not both"):
        open_source(spec, stream="s", artifact=None, start=1, after=0)
    with pytest.raises(ConfigError, match="after 'row three' is not a position"):
        open_source(spec, stream="s", artifact=None, after="row three")


def test_npy_file_problems(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="is an NPZ archive, not a single array; use kind: npz"):
        open_source({"kind": "npy", "path": str(tmp_path / "x.npz")}, stream="s", artifact=None)
    with pytest.raises(DataError, match="does not exist"):
        open_source({"kind": "npy", "path": str(tmp_path / "none.npy")}, stream="s", artifact=None)
    np.save(tmp_path / "o.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="expected numeric inputs"):
        open_source({"kind": "npy", "path": str(tmp_path / "o.npy")}, stream="s", artifact=None)


@pytest.mark.parametrize(
    ("module", "spec", "artifact", "extra"),
    [
        ("cv2", {"kind": "video", "path": "a.avi"}, IMAGE, "daemon"),
        ("cv2", {"kind": "rtsp", "url": "rtsp://h/x"}, IMAGE, "daemon"),
        ("edfio", {"kind": "edf", "path": "a.edf", "channels": "C3"}, SIGNAL, "eeg"),
        ("pylsl", {"kind": "lsl", "type": "EEG"}, SIGNAL, "eeg"),
        ("scipy.signal", {"kind": "lsl", "type": "EEG", "preprocess": {"bandpass": [1, 30]}}, SIGNAL, "eeg"),
    ],
)
def test_missing_library_names_the_extra(monkeypatch, module, spec, artifact, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingExtra, match=re.escape(f"pip install 'edgetta[{extra}]'")):
        open_source(spec, stream="s", artifact=artifact)


def test_import_stays_light():
    code = (
        "import sys, edgetta.streams, edgetta.streams.preprocess\n"
        "heavy = [m for m in ('cv2', 'scipy', 'edfio', 'pylsl', 'pyedflib', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
