"""Preprocessing from config: image frames to model inputs (manifest defaults, channel order, resize and crop) and
signal epochs (channel pick, resampling, band-pass zero-phase and causal with carried state, running z-score with
JSON state), with every config mistake a ConfigError naming its key and every unfit input a skip reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edgetta

cv2 = pytest.importorskip("cv2", reason="image preprocessing needs OpenCV: pip install 'edgetta[daemon]'")
signal = pytest.importorskip("scipy.signal", reason="signal preprocessing needs scipy: pip install 'edgetta[eeg]'")

from edgetta.contract import load_artifact  # noqa: E402
from edgetta.errors import CheckpointError, ConfigError  # noqa: E402
from edgetta.streams.preprocess import (  # noqa: E402
    Epocher,
    Unusable,
    image_preprocessor,
    resample_ratio,
    signal_preprocessor,
)

BN_ART = Path(edgetta.__file__).parent / "assets" / "fmnist_resnet_bn"
RGB = SimpleNamespace(input_shape=(None, 3, 4, 6), preprocess={"scale": 1.0})
EEG = SimpleNamespace(input_shape=(None, 1, 1000), preprocess={})
WHERE = "streams[s].source.preprocess"
W = re.escape(WHERE)  # in the expected messages (regular expressions)


def bgr(b: int, g: int, r: int, h: int = 4, w: int = 6) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:] = (b, g, r)
    return frame


# ------------------------------------------------------------------------------------------------ images


def test_image_defaults_come_from_the_manifest():
    prep = image_preprocessor(None, load_artifact(BN_ART))
    settings = prep.to_json()
    assert settings["color"] == "gray" and settings["resize"] == [28, 28] and settings["output_shape"] == [1, 28, 28]
    assert settings["scale"] == pytest.approx(1 / 255) and settings["mean"] == [0.286] and settings["std"] == [0.353]
    x = prep(bgr(200, 200, 200, 56, 56))
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x, (200 / 255 - 0.286) / 0.353, rtol=1e-6)


def test_downscaling_averages_pixels_by_default():
    """interpolation: area (default) averages the 2x2 pixels behind each output pixel; nearest picks one."""
    stripes = np.zeros((8, 12), np.uint8)
    stripes[:, 1::2] = 200
    gray = SimpleNamespace(input_shape=(None, 1, 4, 6), preprocess={"scale": 1.0})
    np.testing.assert_array_equal(image_preprocessor(None, gray)(stripes), 100)
    nearest = image_preprocessor({"interpolation": "nearest"}, gray)(stripes)
    assert set(np.unique(nearest)) <= {0.0, 200.0}


def test_gray_uses_the_bgr_weights_of_opencv():
    gray = SimpleNamespace(input_shape=(None, 1, 4, 6), preprocess={"scale": 1.0})
    x = image_preprocessor(None, gray)(bgr(255, 0, 0))  # pure blue in BGR: luma 0.114 * 255 = 29
    np.testing.assert_array_equal(x, 29)


@pytest.mark.parametrize(("color", "expected"), [("rgb", [30, 20, 10]), ("bgr", [10, 20, 30])])
def test_channel_order(color, expected):
    x = image_preprocessor({"color": color}, RGB)(bgr(10, 20, 30))
    assert x.shape == (3, 4, 6)
    np.testing.assert_array_equal(x[:, 0, 0], expected)


def test_rgb_is_the_default_for_three_channels_and_gray_frames_are_expanded():
    x = image_preprocessor(None, RGB)(bgr(10, 20, 30))
    np.testing.assert_array_equal(x[:, 0, 0], [30, 20, 10])
    x = image_preprocessor(None, RGB)(np.full((4, 6), 7, np.uint8))
    np.testing.assert_array_equal(x, 7)


def test_normalisation_per_channel_and_hwc_layout():
    config = {"scale": 0.5, "mean": [1, 2, 3], "std": [2, 4, 8], "layout": "hwc"}
    x = image_preprocessor(config, SimpleNamespace(input_shape=(None, 4, 6, 3), preprocess={}))(bgr(10, 20, 30))
    assert x.shape == (4, 6, 3)
    np.testing.assert_allclose(x[0, 0], [(15 - 1) / 2, (10 - 2) / 4, (5 - 3) / 8])


def test_resize_shorter_side_then_centre_crop():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 40:] = 255  # left half black, right half white
    prep = image_preprocessor({"resize": 8, "crop": [8, 8], "scale": 1.0}, SimpleNamespace(input_shape=(None, 1, 8, 8)))
    x = prep(frame)  # 40x80 -> 8x16 -> centre 8x8: columns 4..11 of 16, half black half white
    np.testing.assert_array_equal(x[0, :, :4], 0)
    np.testing.assert_array_equal(x[0, :, 4:], 255)
    with pytest.raises(Unusable, match="smaller than the crop"):
        image_preprocessor({"crop": 8, "resize": None, "scale": 1.0}, SimpleNamespace(input_shape=(None, 1, 8, 8)))(
            np.zeros((5, 5), np.uint8)
        )


def test_unusable_frames():
    prep = image_preprocessor(None, RGB)
    with pytest.raises(Unusable, match="not an image"):
        prep(np.zeros((4, 6, 5), np.uint8))
    with pytest.raises(Unusable, match="not an image"):
        prep(np.zeros((0, 6, 3), np.uint8))


@pytest.mark.parametrize(
    ("config", "artifact", "message"),
    [
        ({"colour": "rgb"}, RGB, rf"{W}\.colour: unknown key; allowed here: color, crop, interpolation, layout"),
        ({"color": "hsv"}, RGB, rf"{W}\.color: must be one of gray, rgb, bgr, got 'hsv'"),
        ({"color": "gray"}, RGB, rf"{W}\.color: gray gives 1 channel\(s\) but the model takes 3; allowed: rgb, bgr"),
        ({"crop": [5, 5]}, RGB, rf"{W}\.crop: \[5, 5\] does not give the model's size \[4, 6\]"),
        ({"resize": [5, 5]}, RGB, rf"{W}\.resize: \[5, 5\] does not give the model's size"),
        ({"resize": "big"}, RGB, rf"{W}\.resize: must be a number \(the shorter side\) or \[height, width\]"),
        ({"interpolation": "magic"}, RGB, rf"{W}\.interpolation: must be one of area, linear, nearest, cubic"),
        ({"mean": [1, 2]}, RGB, rf"{W}\.mean: has 2 values; give 1 or 3"),
        ({"std": [0]}, RGB, rf"{W}\.std: must be > 0"),
        ({"scale": "1/255"}, RGB, rf"{W}\.scale: must be a number > 0"),
        (
            None,
            SimpleNamespace(input_shape=(None, 3, 4, 6), preprocess={}),
            rf"{W}: the artifact records no preprocessing",
        ),
        (None, EEG, rf"{W}: image sources give \[C, H, W\] inputs but the model takes \[1, 1000\]"),
        (None, SimpleNamespace(input_shape=(None, 2, 4, 4), preprocess={"scale": 1}), "takes 2 channels per pixel"),
        ("gray", RGB, rf"{W}: must be a mapping"),
    ],
)
def test_image_config_errors_name_the_key(config, artifact, message):
    with pytest.raises(ConfigError, match=message):
        image_preprocessor(config, artifact, where=WHERE)


def test_image_preprocessor_state_is_empty():
    prep = image_preprocessor(None, RGB)
    assert prep.state() == {}
    prep.load_state({})
    with pytest.raises(ConfigError):
        prep.load_state({"zscore": 1})


# ------------------------------------------------------------------------------------------------ signals


def sine(freq: float, rate: float, n: int, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / rate + phase)


def test_resample_to_the_model_rate():
    prep = signal_preprocessor({"rate": 100}, EEG, live=False)
    x = prep(sine(5, 250, 2500)[None], rate=250)  # 10 s at 250 Hz -> 1000 samples at 100 Hz
    assert x.shape == (1, 1000) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 50:-50], sine(5, 100, 1000)[50:-50], atol=0.01)
    assert prep.epoch_samples(250) == 2500 and prep.epoch_samples(100) == 1000
    assert resample_ratio(256, 100) == (25, 64) and resample_ratio(100, 100 * np.pi) is None


def test_rate_mismatch_and_channel_problems_are_unusable():
    strict = signal_preprocessor({"rate": 100, "resample": False}, EEG, live=False)
    with pytest.raises(Unusable, match="sampled at 250 Hz, the model takes 100 Hz"):
        strict(np.zeros((1, 2500)), rate=250)
    prep = signal_preprocessor(None, EEG, live=True)
    with pytest.raises(Unusable, match="2 channel\\(s\\), the model takes 1"):
        prep(np.zeros((2, 1000)), rate=100)
    with pytest.raises(Unusable, match="no regular sampling rate"):
        prep(np.zeros((1, 1000)), rate=0.0)
    with pytest.raises(Unusable, match="epoch has 999 samples"):
        prep(np.zeros((1, 999)), rate=100)
    picked = signal_preprocessor(None, EEG, live=False, channels=["pz-OZ"])
    x = picked(np.stack([np.zeros(1000), np.ones(1000)]), rate=100, labels=["Fpz-Cz", " Pz-Oz "])
    np.testing.assert_array_equal(x, 1)
    with pytest.raises(Unusable, match="channel 'pz-OZ' is not in the stream \\(channels: C3, C4\\)"):
        picked(np.zeros((2, 1000)), rate=100, labels=["C3", "C4"])
    with pytest.raises(Unusable, match="no channel labels"):
        picked(np.zeros((2, 1000)), rate=100)


def test_zero_phase_band_pass_keeps_the_band_without_shifting_it():
    prep = signal_preprocessor({"rate": 100, "bandpass": [3, 20]}, EEG, live=False)
    assert prep.filter == "zero_phase" and prep.state()["filter"] is None
    data = 5 + sine(10, 100, 1000) + sine(40, 100, 1000) + sine(0.2, 100, 1000)
    x = prep(data[None], rate=100)
    np.testing.assert_allclose(x[0, 200:-200], sine(10, 100, 1000)[200:-200], atol=0.03)


def test_causal_band_pass_carries_its_state_across_epochs():
    """Filtering epoch by epoch with the carried state equals filtering the whole signal at once (and does not
    equal restarting the filter at each epoch)."""
    prep = signal_preprocessor({"bandpass": [1, 30]}, EEG, live=True)
    assert prep.filter == "causal"
    data = sine(7, 100, 3000) + 0.5 * sine(45, 100, 3000, 1.0) + 2
    epochs = [prep(data[None, k * 1000 : (k + 1) * 1000], rate=100, position=k) for k in range(3)]
    sos = signal.butter(4, [1, 30], btype="bandpass", fs=100, output="sos")
    whole, _ = signal.sosfilt(sos, data, zi=signal.sosfilt_zi(sos) * data[0])
    np.testing.assert_allclose(np.concatenate([e[0] for e in epochs]), whole, rtol=1e-5, atol=1e-5)
    restarted = signal_preprocessor({"bandpass": [1, 30]}, EEG, live=True)(data[None, 1000:2000], rate=100)
    assert np.abs(restarted[0, :50] - epochs[1][0, :50]).max() > 0.1


def test_running_zscore_state_round_trips_through_json():
    config = {"zscore": "running", "zscore_momentum": 0.5, "bandpass": [0.5, 40], "filter": "causal"}
    rng = np.random.default_rng(0)
    data = [rng.normal(3.0 + k, 1.0 + k, size=(1, 1000)) for k in range(5)]
    prep = signal_preprocessor(config, EEG, live=False)
    outputs = [prep(d, rate=100, position=k) for k, d in enumerate(data)]
    state = prep.state(after=2)
    assert json.loads(json.dumps(state)) == state and state["zscore"]["count"] == 3
    resumed = signal_preprocessor(config, EEG, live=False)
    resumed.load_state(json.loads(json.dumps(state)))
    for k in (3, 4):
        np.testing.assert_array_equal(resumed(data[k], rate=100, position=k), outputs[k])
    fresh = signal_preprocessor(config, EEG, live=False)(data[3], rate=100)
    assert not np.allclose(fresh, outputs[3], atol=1e-3)


def test_running_zscore_is_an_ema_of_mean_and_mean_square():
    prep = signal_preprocessor({"zscore": "running", "zscore_momentum": 0.25}, EEG, live=False)
    a, b = np.full((1, 1000), 2.0), np.concatenate([np.zeros(500), np.full(500, 8.0)])[None]
    prep(a, rate=100)
    x = prep(b, rate=100)
    mean, square = 0.75 * 2 + 0.25 * 4, 0.75 * 4 + 0.25 * 32
    np.testing.assert_allclose(x[0, :2], (np.array([0.0, 0.0]) - mean) / np.sqrt(square - mean**2), rtol=1e-6)
    np.testing.assert_allclose(prep.state()["zscore"]["mean"], [mean])
    per_epoch = signal_preprocessor({"zscore": "epoch"}, EEG, live=False)(b, rate=100)
    np.testing.assert_allclose(per_epoch[0, [0, -1]], [-1, 1], rtol=1e-5)


def test_state_errors():
    prep = signal_preprocessor({"zscore": "running"}, EEG, live=False)
    prep(np.ones((1, 1000)), rate=100, position=0)
    with pytest.raises(CheckpointError, match="no preprocessing state kept for position 7"):
        prep.state(after=7)
    with pytest.raises(CheckpointError, match="version"):
        prep.load_state({"zscore": None})
    with pytest.raises(CheckpointError, match="malformed"):
        prep.load_state({"version": 1, "zscore": {"mean": [0.0]}, "filter": None})
    two = signal_preprocessor({"zscore": "running"}, SimpleNamespace(input_shape=(None, 2, 1000)), live=False)
    with pytest.raises(CheckpointError, match="the model takes 2"):
        two.load_state(prep.state())
    with pytest.raises(CheckpointError, match="not running"):
        signal_preprocessor(None, EEG, live=False).load_state(prep.state())
    stateless = signal_preprocessor(None, EEG, live=False)
    stateless(np.ones((1, 1000)), rate=100, position=0)
    assert stateless.state(after=0) == {"version": 1, "zscore": None, "filter": None}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rate": "fast"}, rf"{W}\.rate: must be a number > 0"),
        ({"bandpass": [40, 10]}, rf"{W}\.bandpass: low edge 40 Hz must be below the high edge 10 Hz"),
        ({"bandpass": [1, 60], "rate": 100}, rf"{W}\.bandpass: high edge 60 Hz must be below half"),
        ({"bandpass": 30}, rf"{W}\.bandpass: must be \[low, high\] in Hz"),
        ({"filter": "acausal"}, rf"{W}\.filter: must be one of auto, zero_phase, causal"),
        ({"zscore": "global"}, rf"{W}\.zscore: must be one of none, epoch, running"),
        ({"zscore_momentum": 0}, rf"{W}\.zscore_momentum: must be a number > 0 and <= 1"),
        ({"epoch": 30, "rate": 100}, rf"{W}\.epoch: 30 s at 100 Hz is 3000 samples but the model takes 1000"),
        ({"resample": "yes"}, rf"{W}\.resample: must be true or false"),
        ({"filter_order": 2.5}, rf"{W}\.filter_order: must be a whole number"),
        ({"notch": 50}, rf"{W}\.notch: unknown key; allowed here: bandpass, epoch, filter"),
    ],
)
def test_signal_config_errors_name_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        signal_preprocessor(config, EEG, live=False, where=WHERE)


def test_signal_preprocessing_refuses_an_image_model():
    with pytest.raises(ConfigError, match=r"signal sources give \[channels, samples\]"):
        signal_preprocessor(None, RGB, live=False, where=WHERE)


def test_epocher_cuts_uneven_chunks_into_consecutive_epochs():
    epocher = Epocher(4, first=10)
    out = []
    for chunk in (np.arange(3), np.arange(3, 10), np.arange(10, 11), np.arange(11, 13)):
        out += epocher.push(np.stack([chunk, -chunk], axis=1).astype(float), chunk.astype(float))
    assert [first for first, _, _ in out] == [10, 14, 18]
    np.testing.assert_array_equal(out[1][1], [[4, 5, 6, 7], [-4, -5, -6, -7]])
    assert [stamp for _, _, stamp in out] == [3.0, 7.0, 11.0]
    assert epocher.received == 23
