"""The ``edgetta`` command line as a new user meets it: version, replay output and exit codes, and
clean messages (never a traceback) for the mistakes people make. Runs on the bundled artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgetta
from edgetta.cli import main
from edgetta.runtime.config import preset_names
from edgetta.runtime.methods import METHODS
from tests.blocking import run_blocking

ASSETS = Path(edgetta.__file__).parent / "assets"
BN_ART = ASSETS / "fmnist_resnet_bn"
REPLAY_EATA = Path(__file__).parents[1] / "configs" / "replay-eata.yaml"


@pytest.fixture(scope="module")
def demo() -> dict[str, np.ndarray]:
    """The bundled demo stream as model-ready x, labels y and phase ids."""
    with np.load(ASSETS / "demo_stream.npz", allow_pickle=False) as data:
        images, labels, phase = data["images"], data["labels"], data["phase"]
    x = ((images.astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]
    return {"x": x, "y": labels, "phase": phase}


def noisy(demo: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` images of the gaussian-noise phase."""
    keep = np.flatnonzero(demo["phase"] == 1)[:n]
    return {"x": demo["x"][keep], "y": demo["y"][keep]}


def replay(tmp_path: Path, data: Path, *extra: str, out: Path | None = None) -> int:
    out = out or tmp_path / "out"
    return main(["replay", "--artifact", str(BN_ART), "--data", str(data), "--out", str(out), *extra])


def no_traceback(captured) -> None:
    assert "Traceback" not in captured.err + captured.out


# ------------------------------------------------------------------------------------------ basics


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgetta {edgetta.__version__}"


def test_replay_cli_writes_records_summary_and_resets_per_domain(tmp_path, demo, capsys):
    pick = np.concatenate([np.flatnonzero(demo["phase"] == p)[:70] for p in (0, 1, 2)])
    x = demo["x"][pick].copy()
    x[5] = np.nan
    data = tmp_path / "stream.npz"
    np.savez(data, x=x, y=demo["y"][pick], domain=demo["phase"][pick])
    out = tmp_path / "out"
    rc = replay(tmp_path, data, "--method", "eata", "--config", str(REPLAY_EATA), "--episodic", out=out)
    assert rc == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(x)))
    assert records[7]["position"] == "stream.npz:7"
    assert records[5]["pred"] is None and "non-finite" in records[5]["skip"]
    assert all(r["pred"] is not None and r["skip"] is None for i, r in enumerate(records) if i != 5)
    assert [r["domain"] for r in records] == demo["phase"][pick].tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 210 and summary["skipped"] == 1 and summary["processed"] == 209
    assert summary["skip_reasons"] == {"non-finite values in input": 1}
    assert summary["resets"] == 2 and summary["updates"] > 0 and 0.5 < summary["accuracy"] <= 1.0
    assert summary["backward_passes"] == summary["updates"]
    for key in ("gated_samples", "events", "seconds", "forward_passes", "samples_per_second"):
        assert key in summary
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    resets = [e for e in events if e["kind"] == "reset"]
    assert [e["reason"] for e in resets] == ["domain changed to 1", "domain changed to 2"]
    assert summary["events"]["reset"] == 2
    printed = capsys.readouterr().out
    assert "1 x non-finite values in input" in printed


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_replays(tmp_path, demo, name, capsys):
    data = tmp_path / "s.npz"
    np.savez(data, x=noisy(demo, 128)["x"])
    code = replay(tmp_path, data, "--method", name)
    if name == "cotta" and json.loads((BN_ART / "manifest.json").read_text())["version"] < 2:
        # cotta needs the contract-v2 soft-target inputs; the bundled artifact is version 1 until re-exported
        assert code == 2 and "re-export it with edgetta >=" in capsys.readouterr().err
        return
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["samples"] == 128 and summary["processed"] == 128 and summary["accuracy"] is None
    assert summary["method"] == name


def test_summary_reports_the_preset_the_user_chose(tmp_path, demo, capsys):
    data = tmp_path / "s.npz"
    np.savez(data, **noisy(demo, 64))
    assert replay(tmp_path, data, "--method", "safe_tent") == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["method"] == "safe_tent"
    assert capsys.readouterr().out.startswith("safe_tent: 64 samples")


@pytest.mark.parametrize(
    ("rows", "expected"), [(64, "1 update, 1 backward pass,"), (128, "2 updates, 2 backward passes,")]
)
def test_update_counts_are_worded_correctly(tmp_path, demo, capsys, rows, expected):
    data = tmp_path / "s.npz"
    np.savez(data, **noisy(demo, rows))
    assert replay(tmp_path, data, "--method", "tent") == 0
    assert expected in capsys.readouterr().out


def test_replay_prints_the_top_skip_reasons(tmp_path, demo, capsys):
    x = noisy(demo, 64)["x"].copy()
    x[[3, 9, 20]] = np.nan
    data = tmp_path / "s.npz"
    np.savez(data, x=x)
    assert replay(tmp_path, data, "--method", "frozen") == 0
    out = capsys.readouterr().out
    assert "3 skipped" in out and "3 x non-finite values in input" in out


# ----------------------------------------------------------------- nothing processed: non-zero exit


@pytest.mark.parametrize(
    ("x", "reason"),
    [
        (np.zeros((6, 3, 32, 32), np.float32), "shape"),
        (np.full((6, 1, 28, 28), np.nan, np.float32), "non-finite"),
        (np.zeros((0, 1, 28, 28), np.float32), "no inputs"),
    ],
    ids=["wrong-shape", "all-nan", "empty"],
)
def test_replay_fails_when_no_row_could_be_processed(tmp_path, capsys, x, reason):
    data = tmp_path / "bad.npz"
    np.savez(data, x=x)
    assert replay(tmp_path, data, "--method", "frozen") != 0
    captured = capsys.readouterr()
    assert "no input could be processed" in captured.err and reason in captured.err
    no_traceback(captured)


# --------------------------------------------------------------------- messages, not tracebacks


def _stream_file(tmp_path: Path, demo: dict[str, np.ndarray]) -> Path:
    data = tmp_path / "s.npz"
    np.savez(data, **noisy(demo, 8))
    return data


def test_out_naming_an_existing_file(tmp_path, demo, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert replay(tmp_path, _stream_file(tmp_path, demo), "--method", "frozen", out=target) == 2
    captured = capsys.readouterr()
    assert f"output path {target} is an existing file" in captured.err and target.read_text() == "keep me"
    no_traceback(captured)


def test_out_that_cannot_be_created(tmp_path, demo, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert replay(tmp_path, _stream_file(tmp_path, demo), "--method", "frozen", out=blocker / "sub") == 2
    captured = capsys.readouterr()
    assert "cannot create output directory" in captured.err and "writable" in captured.err
    no_traceback(captured)


def test_data_given_as_npy(tmp_path, demo, capsys):
    np.save(tmp_path / "x.npy", noisy(demo, 4)["x"])
    assert replay(tmp_path, tmp_path / "x.npy", "--method", "frozen") == 2
    captured = capsys.readouterr()
    assert "single array (.npy)" in captured.err and "numpy.savez" in captured.err
    no_traceback(captured)


def test_data_given_as_yaml(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("preset: tent\nbatch_size: 32\n")
    assert replay(tmp_path, tmp_path / "config.yaml", "--method", "frozen") == 2
    captured = capsys.readouterr()
    assert "text file" in captured.err and "not an NPZ" in captured.err and "pickled" not in captured.err
    no_traceback(captured)


@pytest.mark.parametrize(
    ("y", "message"),
    [(np.arange(4, dtype=np.float64), "dtype float64"), (np.array([0, 1, 10, 3]), "outside 0..9")],
    ids=["float", "out-of-range"],
)
def test_bad_labels_are_refused(tmp_path, demo, capsys, y, message):
    data = tmp_path / "s.npz"
    np.savez(data, x=noisy(demo, 4)["x"], y=y)
    assert replay(tmp_path, data, "--method", "frozen") == 2
    captured = capsys.readouterr()
    assert message in captured.err
    no_traceback(captured)


def test_artifact_given_as_the_manifest_file(tmp_path, demo, capsys):
    rc = main(
        [
            "replay",
            "--artifact",
            str(BN_ART / "manifest.json"),
            "--data",
            str(_stream_file(tmp_path, demo)),
            "--method",
            "frozen",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    captured = capsys.readouterr()
    # The message says to pass the directory; it must not claim that an existing path does not exist.
    assert rc == 2 and "directory" in captured.err and "does not exist" not in captured.err
    no_traceback(captured)


def test_unknown_method_lists_every_accepted_name(tmp_path, demo, capsys):
    assert replay(tmp_path, _stream_file(tmp_path, demo), "--method", "tnet") == 2
    captured = capsys.readouterr()
    assert "tnet" in captured.err
    for name in [*METHODS, *preset_names()]:
        assert name in captured.err
    no_traceback(captured)


def test_replay_without_method_or_config_says_what_to_give(tmp_path, demo, capsys):
    assert replay(tmp_path, _stream_file(tmp_path, demo)) == 2
    captured = capsys.readouterr()
    assert "--method" in captured.err and "safe_tent" in captured.err


def test_bad_config_value_names_the_key(tmp_path, demo, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tent\nmethod_args: {lr: fast}\n")
    assert replay(tmp_path, _stream_file(tmp_path, demo), "--config", str(config)) == 2
    captured = capsys.readouterr()
    assert "lr" in captured.err and "fast" in captured.err
    no_traceback(captured)


def test_checkpoint_errors_are_printed_as_messages(monkeypatch, capsys):
    """Any EdgettaError (CheckpointError included) from a command becomes one line on stderr and exit 2."""
    import edgetta.cli as cli
    from edgetta.errors import CheckpointError

    def broken(args):
        raise CheckpointError("checkpoint run.ckpt was written for another artifact")

    monkeypatch.setattr(cli, "cmd_replay", broken)
    assert main(["replay", "--artifact", "a", "--data", "d", "--out", "o", "--method", "tent"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "edgetta replay: error: checkpoint run.ckpt was written for another artifact"


# --------------------------------------------------------------------------------- plain install


def test_plain_install_replays_and_demos_without_torch_scipy_or_matplotlib(tmp_path, demo):
    data = tmp_path / "s.npz"
    np.savez(data, **noisy(demo, 64))
    result = run_blocking(
        "from edgetta.cli import main\n"
        f"rc = main(['replay', '--artifact', {str(BN_ART)!r}, '--data', {str(data)!r}, '--method', 'sar',\n"
        f"           '--out', {str(tmp_path / 'o')!r}])\n"
        f"rc = rc or main(['demo', '--out', {str(tmp_path / 'demo')!r}, '--limit-per-phase', '16',\n"
        "                  '--batch-size', '16'])\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["backward_passes"] > 0
    assert (tmp_path / "demo" / "demo.json").is_file() and not (tmp_path / "demo" / "demo.png").exists()
    assert "demo.png skipped: pip install 'edgetta[plot]'" in result.stderr


def test_raw_uint8_images_replay_like_their_normalised_floats(tmp_path):
    """Integer images reach the adapter unchanged, which applies the manifest's preprocessing."""
    with np.load(ASSETS / "demo_stream.npz", allow_pickle=False) as data:
        images = data["images"][data["phase"] == 1][:64][:, None]
    np.savez(tmp_path / "u8.npz", x=images)
    np.savez(tmp_path / "f32.npz", x=(images.astype(np.float32) / 255.0 - 0.2860) / 0.3530)
    preds = {}
    for name in ("u8", "f32"):
        assert replay(tmp_path, tmp_path / f"{name}.npz", "--method", "bn", out=tmp_path / name) == 0
        lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        preds[name] = [json.loads(line)["pred"] for line in lines]
    assert None not in preds["u8"] and preds["u8"] == preds["f32"]
