"""The example configs in configs/ run as written (copied next to generated data): a video file written with
OpenCV's VideoWriter, a folder of PNG images, an EDF+ night written with edfio (with a sleep-staging artifact
exported from the test zoo), an LSL outlet in this process, and the camera config on a machine without a camera."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgetta.daemon import Daemon, load_daemon_config
from tests.daemon_helpers import ASSETS, REPO, Background, free_port, key, records, scrape, wait_until

CONFIGS = REPO / "configs"


def deploy(tmp_path: Path, name: str, **changes) -> Path:
    """configs/<name> copied into ``tmp_path`` (its relative paths now point there), top-level keys changed."""
    data = yaml.safe_load((CONFIGS / name).read_text())
    data.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def demo_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ASSETS / "demo_stream.npz") as data:
        return data["images"][:n], data["labels"][:n]


def test_the_video_config_runs_on_an_mp4_written_with_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    images, _ = demo_images(150)
    (tmp_path / "media").mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "media/clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15, (56, 56))
    for image in images:
        writer.write(cv2.cvtColor(cv2.resize(image, (56, 56)), cv2.COLOR_GRAY2BGR))
    writer.release()
    summary = Daemon(load_daemon_config(deploy(tmp_path, "daemon-video-eata.yaml"))).run()
    assert summary.exit_code == 0 and summary.streams["clip"]["state"] == "finished"
    rows = (tmp_path / "out/clip.csv").read_text().splitlines()
    assert len(rows) == 151 and rows[0].endswith(",probs")
    assert summary.streams["clip"]["processed"] == 150


def test_the_image_folder_config_runs_on_png_files(tmp_path):
    cv2 = pytest.importorskip("cv2")
    images, labels = demo_images(80)
    (tmp_path / "images").mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"images/{i:04d}.png"), image)
    summary = Daemon(load_daemon_config(deploy(tmp_path, "daemon-images.yaml"))).run()
    assert summary.streams["folder"]["processed"] == 80
    out = records(tmp_path / "out/images.jsonl")
    assert [r["position"] for r in out][:2] == ["0000.png", "0001.png"]
    accuracy = np.mean([r["pred"] == y for r, y in zip(out, labels)])
    assert accuracy > 0.6  # the frames reach the model as the manifest expects


@pytest.fixture(scope="module")
def sleep_artifact(artifacts) -> Path:
    return artifacts.get("sleep_cnn")[0]


def write_night(path: Path, epochs: int, rate: int = 100) -> None:
    edfio = pytest.importorskip("edfio")
    t = np.arange(epochs * 30 * rate) / rate
    rng = np.random.default_rng(0)
    eeg = 20 * np.sin(2 * np.pi * 1.5 * t) * (1 + np.floor(t / 300)) + rng.normal(0, 5, t.size)
    signals = [edfio.EdfSignal(eeg, rate, label="EEG Fpz-Cz", physical_range=(-500, 500))]
    edfio.Edf(signals, annotations=[edfio.EdfAnnotation(0.0, 30.0, "Sleep stage W")]).write(path)


def eeg_deployment(folder: Path, artifact: Path) -> Path:
    folder.mkdir()
    (folder / "artifacts").mkdir()
    os.symlink(artifact, folder / "artifacts/sleep_cnn")
    (folder / "recordings").mkdir()
    write_night(folder / "recordings/night1.edf", 70)
    return deploy(folder, "daemon-eeg-replay.yaml")


def test_the_eeg_replay_config_runs_and_resumes_exactly_with_its_running_zscore(tmp_path, sleep_artifact):
    """70 epochs of a 100 Hz EDF+ night, band-passed and z-scored with running statistics; stopped after one
    batch and resumed: equal to an uninterrupted replay (the preprocessing state is in the checkpoint)."""
    whole = eeg_deployment(tmp_path / "whole", sleep_artifact)
    summary = Daemon(load_daemon_config(whole)).run()
    assert summary.streams["night1"]["processed"] == 70 and summary.exit_code == 0
    reference = records(tmp_path / "whole/out/night1.jsonl")
    parts = eeg_deployment(tmp_path / "parts", sleep_artifact)
    Daemon(load_daemon_config(parts), max_items=32).run()
    ck = json.loads((tmp_path / "parts/state/eeg/streams/night1/checkpoint.json").read_text())
    assert ck["position"] == 31 and ck["preprocess"]["zscore"]["count"] == 32
    Daemon(load_daemon_config(parts)).run()
    assert [key(r) for r in records(tmp_path / "parts/out/night1.jsonl")] == [key(r) for r in reference]
    events = records(tmp_path / "whole/out/night1.events.jsonl")
    assert {e["rail"] for e in events} >= {"runtime"} and all(e["stream"] == "night1" for e in events)


@pytest.fixture()
def lsl_machine_scope(tmp_path, monkeypatch):
    """liblsl limited to this machine (as in tests/test_sources_lsl.py), set before the library is used."""
    config = tmp_path / "lsl_api.cfg"
    config.write_text("[multicast]\nResolveScope = machine\n[log]\nlevel = -2\n")
    if "LSLAPICFG" not in os.environ:
        monkeypatch.setenv("LSLAPICFG", str(config))
    return pytest.importorskip("pylsl")


def test_the_lsl_config_runs_on_a_local_outlet(tmp_path, sleep_artifact, lsl_machine_scope):
    pylsl = lsl_machine_scope
    info = pylsl.StreamInfo("edgetta-test-amp", "EEG", 1, 100, "float32", f"amp-{os.getpid()}")
    info.desc().append_child("channels").append_child("channel").append_child_value("label", "Fpz-Cz")
    outlet = pylsl.StreamOutlet(info)
    stop = threading.Event()

    def push() -> None:
        rng, n = np.random.default_rng(1), 0
        while not stop.is_set():
            chunk = 20 * np.sin(2 * np.pi * 1.5 * (np.arange(n, n + 1000) / 100)) + rng.normal(0, 5, 1000)
            outlet.push_chunk(chunk.astype(np.float32)[:, None].tolist())
            n += 1000
            time.sleep(0.01)  # about 10 epochs of 30 s per second

    (tmp_path / "artifacts").mkdir()
    os.symlink(sleep_artifact, tmp_path / "artifacts/sleep_cnn")
    port = free_port()
    path = deploy(tmp_path, "daemon-lsl-eeg.yaml", metrics={"host": "127.0.0.1", "port": port})
    data = yaml.safe_load(path.read_text())
    data["streams"][0]["source"]["name"] = "edgetta-test-amp"  # this test's outlet, not any other on the host
    path.write_text(yaml.safe_dump(data))
    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        bg = Background(path)
        out = tmp_path / "out/amp0.jsonl"
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, timeout=60)
        code, text = scrape(bg.daemon, "/metrics")
        assert code == 200 and 'edgetta_source_events_total{event="connected",stream="amp0"}' in text
        summary = bg.stop()
    finally:
        stop.set()
        pusher.join(5)
    assert summary.exit_code == 0 and summary.streams["amp0"]["processed"] >= 5
    got = records(tmp_path / "out/amp0.jsonl")
    assert all(r["skip"] is None and r["pred"] is not None for r in got)


def test_the_camera_config_without_a_camera_keeps_retrying_and_reports_it(tmp_path):
    pytest.importorskip("cv2")
    if any(Path("/dev").glob("video*")):
        pytest.skip("a camera is attached; this test is for a machine without one")
    path = deploy(
        tmp_path,
        "daemon-camera-tent.yaml",
        metrics={"host": "127.0.0.1", "port": free_port()},
        health={"stall_seconds": 0.5},
    )
    bg = Background(path)
    try:
        wait_until(lambda: bg.daemon.metrics.render()[0].count(b'event="open_failed"') > 0, timeout=30)
        time.sleep(0.6)
        code, body = scrape(bg.daemon, "/healthz")
        assert code == 503 and "stream cam0 stalled" in json.loads(body)["reasons"][0]
    finally:
        summary = bg.stop()
    assert summary.exit_code == 0 and summary.streams["cam0"]["processed"] == 0
