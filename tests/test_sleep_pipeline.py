"""The sleep pipeline: stage command end to end, the per-epoch CSV, metrics, the signal-quality rail inside
the pipeline (flagged epochs never adapt), and the hard reset at each new record."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edgetta.sleep.metrics import report
from edgetta.sleep.pipeline import DEFAULT_ARTIFACT, make_adapters, stage_night
from edgetta.sleep.report import EPOCH_COLUMNS, night_metrics, write_epochs_csv

RATE, T = 100.0, 3000


def night(seed: int, n: int = 80, gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A small EEG-like night in microvolts: per-stage rhythms over noise (not the synthetic cohort)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 5, n // 8 + 1), 8)[:n]
    t = np.arange(T) / RATE
    freq = {0: 10.0, 1: 6.0, 2: 13.0, 3: 1.5, 4: 5.0}
    amp = {0: 20.0, 1: 15.0, 2: 10.0, 3: 60.0, 4: 8.0}
    eeg = np.stack(
        [amp[k] * np.sin(2 * np.pi * freq[k] * t + rng.random() * 6) + 5 * rng.standard_normal(T) for k in labels]
    )
    return (gain * eeg).astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def adapters():
    return make_adapters()


def test_the_bundled_artifact_says_it_is_synthetic_trained() -> None:
    manifest = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    assert manifest["training"]["synthetic"] is True
    assert "synthetic" in (DEFAULT_ARTIFACT / "README.md").read_text().lower()
    assert manifest["class_names"] == ["W", "N1", "N2", "N3", "REM"]
    assert sum(p.stat().st_size for p in DEFAULT_ARTIFACT.iterdir()) < 2_000_000


def test_flagged_epochs_are_staged_but_never_adapt(adapters) -> None:
    """Electrode pops on some epochs: they are staged and flagged, never adapt, and every other epoch is
    staged exactly as in the same night without them."""
    eeg, labels = night(1, gain=1.7)
    bad = [5, 6, 30, 61]
    popped = eeg.copy()
    popped[bad] = 3000.0 * np.sign(np.sin(np.arange(T)))[None]  # saturated square wave: amplitude beyond bound
    staged = stage_night(popped, adapters, labels=labels, record_id="popped")
    assert [i for i, f in enumerate(staged.flagged) if f] == bad
    assert not staged.updated[bad].any() and staged.updated.sum() > 0
    assert (staged.adapted[bad] >= 0).all()  # still staged
    excluded = [i for i, ev in enumerate(staged.events) if any(e["kind"] == "exclude" for e in ev)]
    assert excluded == bad
    good = [i for i in range(len(eeg)) if i not in bad]
    clean = stage_night(eeg[good], adapters, labels=labels[good], record_id="clean")
    np.testing.assert_allclose(staged.probs[good], clean.probs, atol=1e-5)


def test_each_record_starts_from_the_source_state(adapters) -> None:
    a, la = night(2, gain=2.5)
    b, lb = night(3, gain=0.6)
    stage_night(a, adapters, labels=la, record_id="A")
    after_a = stage_night(b, adapters, labels=lb, record_id="B")
    fresh = stage_night(b, make_adapters(), labels=lb, record_id="B")
    np.testing.assert_allclose(after_a.probs, fresh.probs, atol=1e-6)
    first = after_a.events[0][0]
    assert first["kind"] == "reset" and first["reason"] == "new record B" and first["target"] == "source"
    assert after_a.updated.any()


def test_epochs_csv_and_metrics_agree(tmp_path, adapters) -> None:
    eeg, labels = night(4)
    labels[:3] = -1  # unscored epochs: no true stage, left out of the metrics
    staged = stage_night(eeg, adapters, labels=labels, record_id="r")
    write_epochs_csv(staged, tmp_path / "epochs.csv")
    with open(tmp_path / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == EPOCH_COLUMNS and len(rows) == len(eeg)
    assert [r["true_stage"] for r in rows[:3]] == ["", "", ""]
    assert float(rows[1]["onset_s"]) == 30.0
    stages = ["W", "N1", "N2", "N3", "REM"]
    probs = np.array([[float(r[f"p_{s}"]) for s in stages] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    assert [stages.index(r["adapted_stage"]) for r in rows] == probs.argmax(1).tolist()
    truth = [stages.index(r["true_stage"]) for r in rows[3:]]
    metrics = night_metrics(staged)
    for which in ("frozen", "adapted"):
        pred = [stages.index(r[f"{which}_stage"]) for r in rows[3:]]
        assert metrics[which] == report(truth, pred)
    assert metrics["scored_epochs"] == len(eeg) - 3
    assert metrics["run"]["adapted"] == sum(int(r["adapted"]) for r in rows)
    assert metrics["run"]["gated"] == sum(int(r["gated"]) for r in rows)
    assert all(int(r["adapted"]) + int(r["gated"]) <= 1 for r in rows)


def test_the_daemon_replays_an_edf_night_with_stablesleep(tmp_path) -> None:
    """configs/daemon-sleep-edf.yaml as written (its paths under tmp_path): one record per epoch, with the
    stablesleep rails reported in the events file."""
    edfio = pytest.importorskip("edfio")
    import yaml

    from edgetta.daemon import Daemon, load_daemon_config
    from tests.daemon_helpers import REPO, records

    eeg, _ = night(5, n=24)
    (tmp_path / "recordings").mkdir()
    signal = edfio.EdfSignal(eeg.reshape(-1).astype(np.float64), RATE, label="EEG Fpz-Cz", physical_range=(-500, 500))
    edfio.Edf([signal]).write(tmp_path / "recordings/night1.edf")
    config = tmp_path / "daemon-sleep-edf.yaml"
    config.write_text((REPO / "configs/daemon-sleep-edf.yaml").read_text())
    assert yaml.safe_load(config.read_text())["adapt"] == {"preset": "stablesleep"}
    summary = Daemon(load_daemon_config(config)).run()
    assert summary.exit_code == 0 and summary.streams["night1"]["processed"] == 24
    out = records(tmp_path / "out/night1.jsonl")
    assert [r["index"] for r in out] == list(range(24)) and all(len(r["probs"]) == 5 for r in out)
    rails = {e["rail"] for e in records(tmp_path / "out/night1.events.jsonl")}
    assert "runtime" in rails


@pytest.fixture(scope="module")
def short_cohort(tmp_path_factory):
    """Two short SYNTHETIC nights written as EDF+ pairs (one clean, one with a gain shift)."""
    from edgetta.sleep.synth import write_cohort

    out = tmp_path_factory.mktemp("cohort")
    return write_cohort(out, 2, seed=7, shifts=[None, "gain"], hours=0.75)


def test_stage_command_end_to_end(tmp_path, short_cohort, capsys) -> None:
    from edgetta.cli import main

    rec = short_cohort[0]
    out = tmp_path / "out"
    assert main(["sleep", "stage", str(rec.psg), "--hypnogram", str(rec.hypnogram), "--out", str(out)]) == 0
    with open(out / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == EPOCH_COLUMNS and 0 < len(rows) <= rec.epochs
    assert all(r["true_stage"] in ("W", "N1", "N2", "N3", "REM") for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frozen"]["confusion_rows"] == ["W", "N1", "N2", "N3", "REM"]
    assert np.array(metrics["adapted"]["confusion"]).sum() == len(rows) == metrics["scored_epochs"]
    assert metrics["recipe"] == "stablesleep" and metrics["run"]["events"]["runtime:reset"] == 1
    printed = capsys.readouterr().out
    assert "kappa" in printed and "(frozen -> adapted)" in printed
    if (out / "hypnogram.png").exists():
        assert (out / "hypnogram.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "matplotlib is not installed" in printed
    # without a hypnogram: no true stage, no metrics
    bare = tmp_path / "bare"
    assert main(["sleep", "stage", str(rec.psg), "--out", str(bare), "--median", "3"]) == 0
    with open(bare / "epochs.csv", newline="") as f:
        assert {r["true_stage"] for r in csv.DictReader(f)} == {""}
    assert not (bare / "metrics.json").exists()


def test_eval_and_synth_commands(tmp_path, short_cohort, capsys) -> None:
    from edgetta.cli import main

    folder = short_cohort[0].psg.parent
    assert main(["sleep", "eval", str(folder), "--out", str(tmp_path / "eval")]) == 0
    cohort = json.loads((tmp_path / "eval/metrics.json").read_text())
    from edgetta.sleep.sleepedf import find_pairs

    assert [r["record"] for r in cohort["records"]] == [p.record_id for p in find_pairs(folder)]
    assert len(cohort["records"]) == 2 and (tmp_path / "eval/records").is_dir()
    table = (tmp_path / "eval/cohort.md").read_text().splitlines()
    assert table[0].startswith("| record |") and table[-1].startswith("| pooled |") and len(table) == 5
    pooled = cohort["pooled"]["adapted"]
    assert pooled["epochs"] == sum(r["scored_epochs"] for r in cohort["records"])
    assert "2 records: mean kappa" in capsys.readouterr().out
    assert main(["sleep", "synth", "--subjects", "1", "--hours", "0.3", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*PSG.edf"))) == 1


def test_synth_command_writes_the_shifts_asked_for(tmp_path, capsys) -> None:
    from edgetta.cli import main

    args = ["sleep", "synth", "--subjects", "3", "--hours", "0.2"]
    assert main([*args, "--shifts", "pops,gain", "--out", str(tmp_path / "a")]) == 0
    records = json.loads((tmp_path / "a/cohort.json").read_text())["records"]
    assert [r["shift"] for r in records] == ["pops", "gain", "pops"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # default: first half clean, then shifted
    records = json.loads((tmp_path / "b/cohort.json").read_text())["records"]
    assert [r["shift"] is None for r in records] == [True, True, False]
    assert main([*args, "--shifts", "bogus", "--out", str(tmp_path / "c")]) == 2
    assert "unknown shift bogus" in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    from edgetta.cli import main

    assert main(["sleep", "stage", str(tmp_path / "missing.edf"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(["sleep", "eval", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "holds no PSG/hypnogram EDF pairs" in capsys.readouterr().err
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["sleep", "synth", "--subjects", "0", "--out", str(folder)]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_running_zscore_is_causal_and_matches_the_daemon() -> None:
    from edgetta.sleep.normalize import RunningZScore, zscore_record
    from edgetta.streams.preprocess.signal import SignalPreprocessor

    eeg, _ = night(6, n=12, gain=3.0)
    z = zscore_record(eeg)
    daemon = SignalPreprocessor(channels=1, samples=T, zscore="running", zscore_momentum=0.1)
    np.testing.assert_allclose(z, np.stack([daemon(e[None], rate=RATE)[0] for e in eeg]), rtol=1e-5, atol=1e-5)
    later = eeg.copy()
    later[6:] *= 10.0  # the future does not change the past
    np.testing.assert_array_equal(zscore_record(later)[:6], z[:6])
    # by hand for the second epoch: EMA (0.1) of the means and mean squares
    m = 0.9 * eeg[0].mean() + 0.1 * eeg[1].mean()
    s = 0.9 * (eeg[0] ** 2).mean() + 0.1 * (eeg[1] ** 2).mean()
    np.testing.assert_allclose(z[1], (eeg[1] - m) / np.sqrt(s - m * m), rtol=1e-4, atol=1e-4)
    # a skipped (flagged) epoch uses the statistics so far and leaves them unchanged
    r = RunningZScore()
    r(eeg[0])
    before = (r.mean, r.square)
    out = r(eeg[1] * 100, update=False)
    assert (r.mean, r.square) == before
    expected = (eeg[1] * 100.0 - before[0]) / np.sqrt(before[1] - before[0] ** 2)
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_causal_median_by_hand() -> None:
    from edgetta.sleep.smoothing import causal_median

    assert causal_median(np.array([0, 0, 4, 0, 2, 2, 2]), 3).tolist() == [0, 0, 0, 0, 2, 2, 2]
    assert causal_median(np.array([3, 1, 1]), 3).tolist() == [3, 1, 1]  # lower median of [1, 3] is 1
    assert causal_median(np.array([4, 2, 0]), 1).tolist() == [4, 2, 0]


def test_the_sleep_commands_run_without_torch(tmp_path, short_cohort) -> None:
    """Bedside staging is device-side: stage a night through the CLI with every torch import refused."""
    from tests.conftest import run_without_torch

    rec = short_cohort[1]
    body = (
        "from edgetta.cli import main\n"
        f"rc = main(['sleep', 'stage', {str(rec.psg)!r}, '--hypnogram', {str(rec.hypnogram)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}])\n"
    )
    done = run_without_torch(body, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o/metrics.json").exists()
