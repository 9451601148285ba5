#!/usr/bin/env python
"""Benchmark of cloud-edge sync (docs/sync.md): what the device uploads, what it costs, what it gains.

1. Selection (device only, no server): the bundled Fashion-MNIST model with the device's forward-only method
   (``bn`` preset, batches of 16) streams Fashion-MNIST-C test images per corruption and severity; CEMA's
   selection (paper defaults) decides per batch. Reported: fraction uploaded, excluded by reason.
2. Bytes up per sample: the upload body (gzip-compressed safetensors of float32 model inputs + entropy) for a
   batch of 64 samples of that stream, divided by 64.
3. The loop (``--loop``, needs ``edgetta cloud serve``, i.e. torch): the two documented processes on 127.0.0.1
   for each upload policy (CEMA, upload-all, a random subset of CEMA's size): the edge streams phase 1 of a shifted
   stream (uploads), the cloud distils and publishes, the edge applies the bundle; then phase 2 (other images,
   same shift) measures accuracy. Reported: uploaded fraction, accuracy vs the frozen edge model and vs the device
   without bundles, bytes down per bundle, time from the first upload to the applied bundle.

    python tools/bench_sync.py --per-domain 1000 --json docs/sync.json
    python tools/bench_sync.py --loop --json docs/sync.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetta.data.corruptions import corrupt  # noqa: E402
from edgetta.data.fashion_mnist import load_fashion_mnist  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import load_config  # noqa: E402
from edgetta.sync._edge_client import encode_samples  # noqa: E402
from edgetta.sync.selection import CemaSelector  # noqa: E402

ART = REPO / "edgetta" / "assets" / "fmnist_resnet_bn"
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "fog", "contrast")


def domain_images(name: str, severity: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded Fashion-MNIST test images with corruption ``name`` at ``severity`` (uint8 [n, 1, 28, 28])."""
    images, labels = load_fashion_mnist("test")
    idx = np.random.default_rng(seed).permutation(len(labels))[:n]
    return corrupt(images[idx], name, severity, seed=seed)[:, None], labels[idx]


def selection(per_domain: int, batch: int, seed: int) -> dict[str, Any]:
    """Part 1 and 2: CEMA's upload fraction per severity (averaged over corruptions), and bytes per sample."""
    out: dict[str, Any] = {"per_severity": {}, "per_domain": {}}
    body_bytes: list[float] = []
    for severity in (5, 4, 3, 2, 1):
        fractions = []
        for name in CORRUPTIONS:
            images, _ = domain_images(name, severity, per_domain, seed)
            adapter = Adapter(ART, load_config(preset="bn"))
            selector = CemaSelector(adapter.artifact.num_classes)
            for start in range(0, len(images), batch):
                result = adapter.process(images[start : start + batch])
                selector.select(result.logits)
            c = selector.counts()
            fractions.append(c["selected"] / c["seen"])
            out["per_domain"][f"{name}-{severity}"] = {k: v / c["seen"] for k, v in c.items() if k != "seen"}
            if severity == 5:
                x = adapter.inputs.prepare(images[:64]).rows
                ent = np.full(len(x), 0.5, np.float32)
                body = encode_samples(x, ent, device_id="cam0", base_sha256="0" * 64, batch_seq=1)
                body_bytes.append(len(body) / len(x))
        out["per_severity"][severity] = float(np.mean(fractions))
        print(f"severity {severity}: CEMA uploads {np.mean(fractions):.1%} (mean over {len(CORRUPTIONS)} shifts)")
    out["bytes_up_per_sample"] = float(np.mean(body_bytes))
    out["raw_bytes_per_sample"] = 4 * 28 * 28 + 4
    print(f"bytes up per sample: {out['bytes_up_per_sample']:.0f} (raw float32 input + entropy: {4 * 28 * 28 + 4})")
    return out


# -- the two-process loop ------------------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, *, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class SyncLoop:
    """``edgetta cloud serve`` and ``edgetta run`` on 127.0.0.1, driven as a person would: key pair and tokens
    from the documented commands, the edge reading a watched image folder the loop writes PNG frames into.

    Phase ``learn`` frames are uploaded (per ``policy``) and learnt from; :meth:`publish` asks the cloud for a
    bundle and waits until the edge applied it; phase ``eval`` frames then measure the edge's accuracy."""

    TOKEN = "cam0-0123456789abcdef"
    ADMIN = "admin-0123456789abcdef"

    def __init__(
        self,
        workdir: Path,
        *,
        policy: str = "cema",
        fraction: float = 0.3,
        edge_preset: str = "bn",
        publish_every: int = 1000,
        poll_interval: float = 0.3,
        warmup: int = 256,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy, self.fraction, self.edge_preset = policy, fraction, edge_preset
        self.publish_every, self.poll_interval, self.warmup = publish_every, poll_interval, warmup
        self.cloud_port, self.metrics_port = _free_port(), _free_port()
        self.cloud: subprocess.Popen | None = None
        self.edge: subprocess.Popen | None = None
        self.labels: dict[str, int] = {}
        self.written = 0
        self.times: dict[str, float] = {}

    # -- setup ------------------------------------------------------------------------------------------
    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "edgetta.cli", *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=300,
            env=_child_env(),
            check=True,
        )

    def setup(self) -> None:
        """Keys (``edgetta keys generate``), the tokens file, the device's token file and the edge config."""
        if not (self.dir / "keys/private.pem").exists():
            self.cli("keys", "generate", "--out", "keys")
        (self.dir / "tokens.yaml").write_text(
            yaml.safe_dump({"devices": {"cam0": self.TOKEN}, "admin": self.ADMIN}, sort_keys=False)
        )
        (self.dir / "cam0.token").write_text(self.TOKEN + "\n")
        (self.dir / "frames").mkdir(exist_ok=True)
        config = {
            "artifact": "bundled:fmnist_resnet_bn",
            "adapt": {"preset": self.edge_preset, "batch_size": 16},
            "state_dir": "edge",
            "checkpoint": {"every_items": 256, "every_seconds": 30},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "log": {"format": "json", "level": "debug"},
            "streams": [
                {
                    "name": "cam0",
                    "source": {"kind": "images", "path": "frames", "watch": True, "poll": 0.05},
                    "preprocess": {"color": "gray"},
                    "output": {"path": "out/cam0.jsonl", "events": "out/cam0.events.jsonl"},
                    "flush_after": 0.1,
                    "queue": {"size": 256, "policy": "block"},  # frames wait on disk: none is dropped
                }
            ],
            "sync": {
                "server": f"http://127.0.0.1:{self.cloud_port}",
                "device_id": "cam0",
                "token_file": "cam0.token",
                "trust": ["keys/public.pem"],
                "upload": {
                    "policy": self.policy,
                    "fraction": self.fraction,
                    "warmup": self.warmup,
                    "batch_rows": 64,
                    "idle_seconds": 0.1,
                    "backoff": {"initial": 0.2, "max": 2},
                },
                "poll": {"interval": self.poll_interval, "jitter": 0.2},
            },
        }
        (self.dir / "edge.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def cloud_command(self) -> list[str]:
        """The documented cloud command (docs/sync.md)."""
        return [
            "cloud",
            "serve",
            "--artifact",
            str(ART),
            "--student",
            "edgetta.cloud.demo:fmnist_student",
            "--teacher",
            "edgetta.cloud.demo:fmnist_teacher",
            "--key",
            "keys/private.pem",
            "--tokens",
            "tokens.yaml",
            "--state",
            "cloud",
            "--port",
            str(self.cloud_port),
            "--publish-every",
            str(self.publish_every),
            "--rate",
            "50",
            "--burst",
            "100",
            "--threads",
            "1",
        ]

    def start_cloud(self, timeout: float = 180.0) -> None:
        log = (self.dir / "cloud.log").open("ab")
        self.cloud = subprocess.Popen(
            [sys.executable, "-m", "edgetta.cli", *self.cloud_command()],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )
        url = f"http://127.0.0.1:{self.cloud_port}/healthz"
        _wait(lambda: self._alive(self.cloud, "cloud") and _http(url)[0] == 200, timeout, "the cloud to listen")

    def start_edge(self, timeout: float = 60.0) -> None:
        """``edgetta run edge.yaml`` (resumes when its state_dir holds a checkpoint)."""
        self.edge_log = self.dir / "edge.log"
        self.edge_lines = len(self.edge_log.read_text().splitlines()) if self.edge_log.exists() else 0
        self.edge = subprocess.Popen(
            [sys.executable, "-m", "edgetta.cli", "run", "edge.yaml"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=self.edge_log.open("ab"),
            env=_child_env(),
        )
        self.wait_log("edgetta run: started", timeout)

    def _alive(self, proc: subprocess.Popen | None, name: str) -> bool:
        if proc is not None and proc.poll() is not None:
            tail = (self.dir / f"{name}.log").read_text()[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        return True

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.edge_log.read_text().splitlines()[self.edge_lines :]:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_log(self, text: str, timeout: float = 60.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self._alive(self.edge, "edge")
            return next((row for row in self.log_lines() if text in row.get("msg", "")), None)

        return _wait(found, timeout, f"the edge to log {text!r}")

    # -- driving ----------------------------------------------------------------------------------------
    def feed(self, images: np.ndarray, labels: np.ndarray, phase: str) -> list[str]:
        """Write frames into the watched folder (names sort in arrival order); returns their names."""
        import cv2

        names = []
        for image, label in zip(images, labels):
            name = f"{self.written:06d}-{phase}.png"
            tmp = self.dir / "frames" / f".{name}"
            cv2.imwrite(str(tmp) + ".png", image.reshape(28, 28))
            os.replace(str(tmp) + ".png", self.dir / "frames" / name)
            self.labels[name] = int(label)
            names.append(name)
            self.written += 1
        self.times.setdefault(f"{phase}_fed", time.time())
        return names

    def records(self) -> list[dict[str, Any]]:
        path = self.dir / "out/cam0.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_records(self, n: int, timeout: float = 120.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            self._alive(self.edge, "edge")
            rows = self.records()
            return rows if len(rows) >= n else None

        return _wait(enough, timeout, f"{n} records")

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("edgetta_sync_") and " " in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def health(self) -> dict[str, Any]:
        return _http(f"http://127.0.0.1:{self.cloud_port}/healthz")[1] or {}

    def wait_uploaded(self, timeout: float = 120.0) -> dict[str, float]:
        """Until the edge's upload queue is empty and the cloud's learner took every sample."""

        def drained() -> dict[str, float] | None:
            self._alive(self.edge, "edge")
            self._alive(self.cloud, "cloud")
            m = self.metrics()
            uploaded = m.get('edgetta_sync_samples_total{outcome="uploaded"}', 0.0)
            h = self.health()
            if m.get("edgetta_sync_queue_depth", 1.0) == 0 and h.get("samples") == uploaded and h.get("queued") == 0:
                return m
            return None

        return _wait(drained, timeout, "the uploads to reach the learner")

    def publish_only(self) -> dict[str, Any]:
        """Ask the cloud for a bundle now (admin token); its metadata."""
        status, info = _http(f"http://127.0.0.1:{self.cloud_port}/v1/publish", token=self.ADMIN, method="POST")
        if status != 200 or not isinstance(info, dict):
            raise RuntimeError(f"publish failed with HTTP {status}: {info}")
        return info

    def publish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Publish a bundle now and wait until the edge applied it."""
        started = time.time()
        info = self.publish_only()
        self.wait_log(f"bundle version {int(info['version'])} applied from slot", timeout)
        info["publish_to_applied_s"] = time.time() - started
        return info

    def accuracy(self, rows: list[dict[str, Any]], names: list[str]) -> float:
        wanted = set(names)
        got = [r for r in rows if r.get("position") in wanted and r.get("pred") is not None]
        if len(got) != len(wanted):
            raise RuntimeError(f"{len(wanted) - len(got)} of {len(wanted)} frames have no prediction")
        return float(np.mean([r["pred"] == self.labels[r["position"]] for r in got]))

    def kill_edge(self) -> None:
        if self.edge is not None:
            self.edge.send_signal(signal.SIGKILL)
            self.edge.wait(30)
            self.edge = None

    def stop(self) -> None:
        for proc in (self.edge, self.cloud):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.edge, self.cloud):
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.edge = self.cloud = None


def frozen_accuracy(images: np.ndarray, labels: np.ndarray, preset: str = "frozen") -> float:
    """Accuracy of the bundled model with ``preset`` and no bundle on ``images`` (batches of 16, as the edge)."""
    adapter = Adapter(ART, load_config(preset=preset))
    preds = np.concatenate([adapter.process(images[i : i + 16]).preds for i in range(0, len(images), 16)])
    return float(np.mean(preds == labels))


def loop_images(corruption: str, severity: int, n_learn: int, n_eval: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint learn and eval frames of one shift (uint8 [n, 1, 28, 28]) with labels."""
    images, labels = domain_images(corruption, severity, n_learn + n_eval, seed)
    return {
        "learn_x": images[:n_learn],
        "learn_y": labels[:n_learn],
        "eval_x": images[n_learn:],
        "eval_y": labels[n_learn:],
    }


def run_loop(
    workdir: Path,
    data: dict[str, np.ndarray],
    *,
    policy: str,
    fraction: float = 0.3,
    edge_preset: str = "bn",
    publish_every: int = 4,
) -> dict[str, Any]:
    """One full loop for one upload policy; the measured figures."""
    loop = SyncLoop(workdir, policy=policy, fraction=fraction, edge_preset=edge_preset, publish_every=publish_every)
    loop.setup()
    try:
        loop.start_cloud()
        loop.start_edge()
        t0 = time.time()
        learn = loop.feed(data["learn_x"], data["learn_y"], "learn")
        loop.wait_records(len(learn))
        m = loop.wait_uploaded()
        first = next((r for r in loop.log_lines() if r.get("sync_event") == "uploaded"), None)
        auto = next((r for r in loop.log_lines() if "applied from slot" in r.get("msg", "")), None)
        info = loop.publish()
        evaluate = loop.feed(data["eval_x"], data["eval_y"], "eval")
        rows = loop.wait_records(len(learn) + len(evaluate))
        seen = m.get('edgetta_sync_samples_total{outcome="seen"}', 0.0)
        uploaded = m.get('edgetta_sync_samples_total{outcome="uploaded"}', 0.0)

        def ts(row: dict[str, Any] | None) -> float | None:
            return None if row is None else datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).timestamp()

        result = {
            "policy": policy,
            "edge_preset": edge_preset,
            "learn_frames": len(learn),
            "eval_frames": len(evaluate),
            "uploaded": int(uploaded),
            "uploaded_fraction": uploaded / seen if seen else 0.0,
            "bytes_up_per_sample": m.get('edgetta_sync_bytes_total{direction="up"}', 0.0) / max(uploaded, 1.0),
            "bundle_version": int(info["version"]),
            "bytes_down_per_bundle": int(info.get("size", 0)),
            "accuracy_eval": loop.accuracy(rows, evaluate),
            "accuracy_learn": loop.accuracy(rows, learn),
            "publish_to_applied_s": round(info["publish_to_applied_s"], 2),
            "first_upload_to_auto_bundle_applied_s": None
            if first is None or auto is None
            else round(ts(auto) - ts(first), 2),
            "wall_s": round(time.time() - t0, 1),
        }
    finally:
        loop.stop()
    return result


def run_loops(args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: for each device method, the loop with CEMA, upload-all and a random subset of CEMA's size, and the
    same method without bundles on the eval frames."""
    import tempfile

    data = loop_images(args.corruption, args.severity, args.learn, args.eval, args.seed)
    out: dict[str, Any] = {
        "shift": f"{args.corruption}-{args.severity}",
        "learn_frames": args.learn,
        "eval_frames": args.eval,
        "frozen_eval": frozen_accuracy(data["eval_x"], data["eval_y"]),
        "presets": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for preset in args.edge_presets.split(","):
            entry: dict[str, Any] = {"without_bundles_eval": frozen_accuracy(data["eval_x"], data["eval_y"], preset)}
            print(f"{preset}: {entry['without_bundles_eval']:.1%} on the eval frames without bundles")
            cema = run_loop(Path(tmp) / f"{preset}-cema", data, policy="cema", edge_preset=preset)
            runs = [cema]
            print(json.dumps(cema))
            for policy, fraction in (("all", 1.0), ("random", cema["uploaded_fraction"])):
                run = run_loop(
                    Path(tmp) / f"{preset}-{policy}", data, policy=policy, fraction=fraction, edge_preset=preset
                )
                runs.append(run)
                print(json.dumps(run))
            entry["runs"] = runs
            out["presets"][preset] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-domain", type=int, default=1000, help="images per corruption and severity")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", action="store_true", help="also run the two-process loop (needs torch)")
    parser.add_argument("--no-selection", action="store_true", help="skip parts 1-2")
    parser.add_argument("--corruption", default="gaussian_noise", help="the loop's shift")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--learn", type=int, default=1536, help="frames the loop learns from")
    parser.add_argument("--eval", type=int, default=1024, help="frames the loop measures on after the bundle")
    parser.add_argument("--edge-presets", default="frozen,bn", help="the device's methods during the loop")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    if not args.no_selection:
        results["selection"] = selection(args.per_domain, args.batch, args.seed)
    if args.loop:
        results["loop"] = run_loops(args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = "python tools/bench_sync.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
