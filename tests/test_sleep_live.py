"""The live bedside path (``edgetta run configs/daemon-sleep-edf.yaml``) stages a night as ``edgetta sleep stage``
does: per-epoch signal quality on the raw microvolts, flagged epochs kept out of the running z-score and out of
adaptation (the ``signal_quality`` rail), the reason in each record, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgetta.errors import ConfigError
from edgetta.sleep.normalize import RunningZScore
from edgetta.streams.preprocess.signal import SignalPreprocessor, signal_preprocessor
from tests.daemon_helpers import REPO, records

pytest.importorskip("edfio")

RATE, T = 100, 3000
BAD = {0: "flat", 7: "clipping", 8: "flat", 21: "amplitude", 33: "flat"}  # epoch -> the reason it gets


def bad_night():
    """A short SYNTHETIC night (uV) with an electrode falling off, saturating and popping."""
    from edgetta.sleep.synth import synth_night

    night = synth_night(3, seed=11, hours=0.4)
    assert night.rate == RATE
    eeg = night.signal_uv.astype(np.float64).reshape(-1, T)
    eeg[0] = 0.0  # the lead is not on yet: nothing recorded
    eeg[8] = 0.0
    eeg[33, 500:] = eeg[33, 499]  # the lead falls off mid-epoch: a dead line
    span = np.abs(eeg[7]).max()
    eeg[7] = np.clip(eeg[7] * 4, -span, span)  # amplifier saturation
    eeg[21, 1500] += 900.0  # an electrode pop
    night.signal_uv = eeg.reshape(-1).astype(np.float32)
    return night


@pytest.fixture(scope="module")
def night_file(tmp_path_factory) -> Path:
    from edgetta.sleep.synth import write_night

    night = bad_night()
    folder = tmp_path_factory.mktemp("night")
    return write_night(night, folder, 3, seed=11).psg


def deploy(folder: Path, psg: Path, **top) -> Path:
    """configs/daemon-sleep-edf.yaml as written, next to a copy of the night (its relative paths point there)."""
    folder.mkdir()
    (folder / "recordings").mkdir()
    (folder / "recordings/night1.edf").write_bytes(psg.read_bytes())
    data = yaml.safe_load((REPO / "configs/daemon-sleep-edf.yaml").read_text())
    data.update(top)
    path = folder / "daemon-sleep-edf.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def replay(config: Path, max_items: int | None = None):
    from edgetta.daemon import Daemon, load_daemon_config

    return Daemon(load_daemon_config(config), max_items=max_items).run()


@pytest.fixture(scope="module")
def live(night_file, tmp_path_factory):
    """The whole night replayed by the daemon: (records, events, checkpoint)."""
    folder = tmp_path_factory.mktemp("live") / "run"
    summary = replay(deploy(folder, night_file))
    assert summary.exit_code == 0 and summary.streams["night1"]["state"] == "finished"
    ck = json.loads((folder / "state/sleep/streams/night1/checkpoint.json").read_text())
    return records(folder / "out/night1.jsonl"), records(folder / "out/night1.events.jsonl"), ck


@pytest.fixture(scope="module")
def offline(night_file):
    """The same file staged as ``edgetta sleep stage`` stages it."""
    from edgetta.sleep.pipeline import make_adapters, stage_night
    from edgetta.sleep.sleepedf import read_night

    night = read_night(night_file, None)
    return night, stage_night(night.eeg, make_adapters(), rate=night.rate, record_id="night1")


def test_flagged_epochs_carry_their_reason_and_never_adapt(live) -> None:
    out, events, _ = live
    assert [r["index"] for r in out] == list(range(len(out))) and len(out) == 48
    assert {r["position"]: r["flagged"] for r in out if r["flagged"]} == BAD
    for r in out:
        bad = r["position"] in BAD
        assert r["pred"] is not None and len(r["probs"]) == 5  # a flagged epoch is still staged
        assert r["excluded"] is bad
        assert ("signal_quality:exclude" in r["events"]) is bad
        if bad:
            assert r["adapted"] is False
    assert sum(r["adapted"] for r in out) > 20  # the rest of the night adapts
    excluded = [e for e in events if e["rail"] == "signal_quality" and e["kind"] == "exclude"]
    assert [e["reasons"] for e in excluded] == [[BAD[k]] for k in sorted(BAD)]


def test_the_running_zscore_leaves_flagged_epochs_out(live, offline) -> None:
    """The checkpointed z-score state equals the offline running z-score over the good epochs only."""
    _, _, ck = live
    night, _ = offline
    z = RunningZScore()
    for i, epoch in enumerate(night.eeg):
        z(epoch.astype(np.float64), update=i not in BAD)
    state = ck["preprocess"]["zscore"]
    assert state["count"] == len(night.eeg) - len(BAD)
    np.testing.assert_allclose([state["mean"][0], state["square"][0]], [z.mean, z.square], rtol=1e-5)


def test_a_live_night_is_staged_as_the_stage_command_stages_it(live, offline) -> None:
    """Same epochs, flags, stages, probabilities, entropy, updates and gates (one call per epoch on both paths;
    the offline reader holds float32 microvolts, the daemon float64, hence the tolerance)."""
    out, _, _ = live
    _, staged = offline
    assert len(staged) == len(out)
    assert [r["flagged"] for r in out] == staged.flagged
    probs = np.array([r["probs"] for r in out])
    np.testing.assert_allclose(probs, staged.probs, atol=2e-4)
    np.testing.assert_allclose([r["entropy"] for r in out], staged.entropy, atol=2e-4)
    assert [r["pred"] for r in out] == staged.adapted.tolist()
    assert [r["adapted"] for r in out] == staged.updated.tolist()
    assert [r["gated"] for r in out] == staged.gated.tolist()


def test_a_resumed_night_equals_an_uninterrupted_one(live, night_file, tmp_path) -> None:
    """Stopped right after a flagged epoch (position 8) and resumed: the same records, flags included (the
    resumed Adapter's start-up note ``runtime:rails`` aside)."""
    out, _, _ = live
    config = deploy(tmp_path / "parts", night_file)
    replay(config, max_items=9)
    ck = json.loads((tmp_path / "parts/state/sleep/streams/night1/checkpoint.json").read_text())
    assert ck["position"] == 8 and ck["preprocess"]["zscore"]["count"] == 9 - 3  # epochs 0, 7, 8 left out
    replay(config)
    parts = records(tmp_path / "parts/out/night1.jsonl")
    fields = ("index", "position", "pred", "entropy", "probs", "flagged", "excluded", "adapted", "gated")

    def rows(recs: list[dict]) -> list[list]:
        return [[r[k] for k in fields] + [[e for e in r["events"] if e != "runtime:rails"]] for r in recs]

    assert rows(parts) == rows(out)


def prep(quality) -> SignalPreprocessor:
    return SignalPreprocessor(channels=2, samples=T, pick=["A", "B"], zscore="running", quality=quality)


def test_the_preprocessor_flags_before_the_zscore_and_names_the_channel() -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(0, 20, (2, T))
    dead = good.copy()
    dead[1] = 0.0
    p = prep({})
    p.prepare(good, rate=RATE, labels=["A", "B"], position=0)
    before = p.state()
    x, flag = p.prepare(dead * 3 + 7, rate=RATE, labels=["A", "B"], position=1)
    assert flag == "B: flat" and x.shape == (2, T) and np.isfinite(x).all()
    assert p.state() == before  # the running statistics did not move
    _, flag = p.prepare(good, rate=RATE, labels=["A", "B"], position=2)
    assert flag is None and p.state()["zscore"]["count"] == 2
    off = prep(None)
    assert off.prepare(dead, rate=RATE, labels=["A", "B"])[1] is None and off.state()["zscore"]["count"] == 1
    loose = prep({"flat_uv": 0.0, "flat_seconds": 1e9, "clip_seconds": 1e9})  # epoch_quality thresholds
    assert loose.prepare(dead, rate=RATE, labels=["A", "B"])[1] is None


def test_quality_settings_are_checked() -> None:
    from edgetta.contract.artifact import load_artifact
    from edgetta.sleep.pipeline import DEFAULT_ARTIFACT

    artifact = load_artifact(DEFAULT_ARTIFACT)
    assert signal_preprocessor({"quality": True}, artifact, live=False).quality == {}
    assert signal_preprocessor({"quality": {"amplitude_uv": 800}}, artifact, live=False).quality == {
        "amplitude_uv": 800
    }
    assert signal_preprocessor({}, artifact, live=False).quality is None
    with pytest.raises(ConfigError, match="unknown threshold.*amplitude"):
        signal_preprocessor({"quality": {"amplitude": 800}}, artifact, live=False)
    with pytest.raises(ConfigError, match="quality"):
        signal_preprocessor({"quality": "yes"}, artifact, live=False)
    with pytest.raises(ConfigError, match="quality.flat_uv"):
        signal_preprocessor({"quality": {"flat_uv": -1}}, artifact, live=False)


def test_in_a_batch_only_the_flagged_row_is_kept_out(offline) -> None:
    """Four epochs per call: the flagged row of a call that updated is excluded and not adapted; its
    batch-mates adapted; each record has its own flag."""
    from edgetta.sleep.normalize import zscore_record
    from edgetta.sleep.pipeline import make_adapters
    from edgetta.streams.items import Item
    from edgetta.streams.loop import StreamRunner

    night, staged = offline
    x = zscore_record(night.eeg, skip=np.array([f is not None for f in staged.flagged]))[:, None, :]
    runner = StreamRunner(make_adapters()[1], batch_size=4)
    out = runner.feed(Item(x[i], position=i, flag=staged.flagged[i]) for i in range(len(x)))
    assert {r.position: r.flag for r in out if r.flag} == BAD
    assert [r.excluded for r in out] == [r.position in BAD for r in out]
    mixed = [out[k : k + 4] for k in range(0, len(out), 4) if any(r.flag for r in out[k : k + 4])]
    updated = [b for b in mixed if any(r.adapted for r in b)]
    assert updated  # a call with a flagged row still adapted on the others
    for batch in updated:
        assert all(r.adapted is (r.flag is None) for r in batch)
        assert all("signal_quality:exclude" in r.events for r in batch)


def test_the_lsl_sleep_config_flags_quality(tmp_path) -> None:
    from edgetta.contract.artifact import load_artifact
    from edgetta.daemon import load_daemon_config

    path = tmp_path / "daemon-sleep-lsl.yaml"
    path.write_text((REPO / "configs/daemon-sleep-lsl.yaml").read_text())
    stream = load_daemon_config(path).streams[0]
    prep = signal_preprocessor(stream.preprocess, load_artifact(stream.artifact), live=True, channels=["Fpz-Cz"])
    assert prep.quality == {} and prep.zscore == "running"
