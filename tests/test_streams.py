"""edgetta.streams: sources, the NPZ stream reader, the one loop, sinks and the progress bar.

Loop mechanics are tested against a small fake adapter that records every call; the equivalence
with plain batching is tested against the bundled BatchNorm artifact."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edgetta
from edgetta.errors import DataError, EdgettaError
from edgetta.streams import (
    ArraySource,
    Collector,
    CsvSink,
    EventLog,
    Item,
    JsonlSink,
    NpzSource,
    Progress,
    Source,
    plural,
    run_stream,
)
from edgetta.streams.npz import pixels_to_inputs, write_npz

ASSETS = Path(edgetta.__file__).parent / "assets"
BN_ART = ASSETS / "fmnist_resnet_bn"


# ------------------------------------------------------------------------------------ a fake adapter


class FakeEvent(SimpleNamespace):
    def to_json(self) -> dict:
        return dict(vars(self))


class FakeAdapter:
    """Items are 2-vectors; pred = argmax; a row with a NaN or of another shape is skipped. Every call
    is recorded, and every call that processes rows emits one 'step' event and counts an update."""

    def __init__(self, batch_size: int = 4, name: str = "fake_preset", num_classes: int = 2) -> None:
        self.config = SimpleNamespace(batch_size=batch_size, method="fake", name=name)
        self.artifact = SimpleNamespace(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)])
        self.totals: Counter[str] = Counter()
        self.state = SimpleNamespace(reset_count=0)
        self.calls: list[np.ndarray] = []
        self.resets: list[str] = []

    def process(self, x: np.ndarray) -> SimpleNamespace:
        x = np.asarray(x)
        self.calls.append(x.copy())
        n = len(x)
        if x.shape[1:] != (2,):
            skipped = [f"shape {x.shape[1:]} != (2,)"] * n
        else:
            skipped = [None if np.isfinite(row).all() else "non-finite values in input" for row in x]
        good = [i for i, s in enumerate(skipped) if s is None]
        preds = np.full(n, -1)
        logits = np.full((n, 2), np.nan, np.float32)
        entropy = np.full(n, np.nan, np.float32)
        events = []
        if good:
            logits[good] = x[good]
            preds[good] = np.argmax(x[good], axis=1)
            entropy[good] = 0.5
            self.totals["updates"] += 1
            self.totals["forward_passes"] += 1
            self.totals["backward_passes"] += 1
            events.append(FakeEvent(kind="step", rows=len(good)))
            if len(good) >= 3:
                events.append(FakeEvent(kind="gate", dropped=1, unreliable=2))
        self.totals["processed"] += len(good)
        self.totals["skipped"] += n - len(good)
        return SimpleNamespace(preds=preds, entropy=entropy, logits=logits, skipped=skipped, events=events)

    def reset(self, reason: str) -> FakeEvent:
        self.resets.append(reason)
        self.state.reset_count += 1
        return FakeEvent(kind="reset", reason=reason)


class ListSource:
    """A source over ready-made items (as a live source would yield them)."""

    name = "list"

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.closed = False

    def __iter__(self) -> Iterator[Item]:
        yield from self.items

    def close(self) -> None:
        self.closed = True


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)


# --------------------------------------------------------------------------------------- sources


def test_array_source_yields_items_with_positions_labels_domains_and_resumes():
    x = vectors(5)
    src = ArraySource(x, np.array([0, 1, 1, 0, 1]), np.array([3, 3, 4, 4, 4]), name="arr")
    assert isinstance(src, Source) and src.total == 5 and len(src) == 5
    items = list(src)
    assert [it.position for it in items] == [0, 1, 2, 3, 4]
    assert [it.label for it in items] == [0, 1, 1, 0, 1]
    assert [it.domain for it in items] == [3, 3, 4, 4, 4]
    assert all(isinstance(it.label, int) and isinstance(it.domain, int) for it in items)
    np.testing.assert_array_equal(items[2].x, x[2])
    assert all(it.timestamp > 1e9 for it in items)  # wall-clock seconds when read
    resumed = ArraySource(x, start=3)
    assert [it.position for it in resumed] == [3, 4] and resumed.total == 2
    stamped = ArraySource(x, timestamps=np.arange(5) * 0.5)
    assert [it.timestamp for it in stamped] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_npz_source_positions_name_the_file_and_pixels_form_is_exact(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    path = write_npz(
        tmp_path / "cam.npz",
        {"pixels": pixels, "pixel_mean": np.float32(0.286), "pixel_std": np.float32(0.353), "y": np.arange(6)},
    )
    src = NpzSource(path, start=2)
    items = list(src)
    assert [it.position for it in items] == ["cam.npz:2", "cam.npz:3", "cam.npz:4", "cam.npz:5"]
    expected = ((pixels.astype(np.float32) / np.float32(255) - np.float32(0.286)) / np.float32(0.353))[:, None]
    np.testing.assert_array_equal(src.x, expected)
    assert src.x.dtype == np.float32 and src.x.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(pixels_to_inputs(pixels, 0.286, 0.353), expected)


def test_npz_source_keeps_integer_inputs_as_they_are(tmp_path):
    """Raw uint8 images go to the adapter unchanged: the adapter applies the manifest's preprocessing."""
    np.savez(tmp_path / "raw.npz", x=np.full((2, 1, 28, 28), 200, np.uint8))
    src = NpzSource(tmp_path / "raw.npz")
    assert src.x.dtype == np.uint8 and next(iter(src)).x.dtype == np.uint8


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


X4 = np.zeros((4, 1, 28, 28), np.float32)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.npz", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: (np.save(d / "x.npy", X4), d / "x.npy")[1], r"single array \(\.npy\).*numpy\.savez"),
        (lambda d: (d / "c.yaml").write_text("method: tent\n") and d / "c.yaml", "text file.*not an NPZ.*savez"),
        (lambda d: (d / "b.bin").write_bytes(b"\x00\xff\xfe" * 50) and d / "b.bin", "not a NumPy file"),
        (lambda d: (d / "z.npz").write_bytes(b"PK\x03\x04garbage") and d / "z.npz", "not a readable NPZ"),
        (lambda d: _save(d / "n.npz", images=X4), r"no array 'x' \(found: images\)"),
        (lambda d: _save(d / "l.npz", x=X4, y=np.arange(3)), "'y' has shape \\(3,\\) but 'x' has 4 rows"),
        (lambda d: _save(d / "d.npz", x=X4, domain=np.zeros(5, int)), "'domain' has shape \\(5,\\)"),
        (lambda d: _save(d / "f.npz", x=X4, y=np.arange(4.0)), "'y' has dtype float64.*astype"),
        (lambda d: _save(d / "b2.npz", x=X4, y=np.ones(4, bool)), "'y' has dtype bool"),
        (lambda d: _save(d / "s.npz", x=np.array(["a", "b"])), "numeric array"),
        (lambda d: _save(d / "p.npz", pixels=np.zeros((2, 28, 28), np.uint8)), "no array 'x'"),
    ],
    ids=[
        "missing",
        "directory",
        "npy",
        "yaml",
        "binary",
        "broken-zip",
        "no-x",
        "y-length",
        "domain-length",
        "float-labels",
        "bool-labels",
        "string-x",
        "pixels-without-normalisation",
    ],
)
def test_npz_source_errors_name_the_problem_and_the_fix(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(DataError, match=expected) as info:
        NpzSource(path)
    assert isinstance(info.value, EdgettaError)
    assert "pickled" not in str(info.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        NpzSource(tmp_path / "o.npz")


def test_check_labels_refuses_labels_outside_the_model_classes():
    src = ArraySource(vectors(4), np.array([0, 1, 5, -1]))
    with pytest.raises(DataError, match=r"2 label\(s\) outside 0\.\.1 \(5 at 2, -1 at 3\)"):
        src.check_labels(2)
    ArraySource(vectors(2), np.array([0, 1])).check_labels(2)  # fine


# ------------------------------------------------------------------------------------------ loop


def test_batches_never_mix_domains_and_episodic_resets_at_each_change():
    domain = np.array([0] * 6 + [1] * 3 + [0] * 2)
    adapter = FakeAdapter(batch_size=4)
    collector = Collector()
    summary = run_stream(adapter, ArraySource(vectors(11), domain=domain), [collector], episodic=True)
    assert [len(c) for c in adapter.calls] == [4, 2, 3, 2]
    starts = np.cumsum([0] + [len(c) for c in adapter.calls])[:-1]
    for start, call in zip(starts, adapter.calls):
        assert len(set(domain[start : start + len(call)])) == 1
    assert adapter.resets == ["domain changed to 1", "domain changed to 0"]  # none before the first batch
    assert summary.resets == 2 and summary.events["reset"] == 2
    assert [r.domain for r in collector.records] == domain.tolist()


def test_not_episodic_means_no_reset_but_still_no_mixed_batches():
    adapter = FakeAdapter(batch_size=8)
    run_stream(adapter, ArraySource(vectors(6), domain=np.array([0, 0, 0, 1, 1, 1])), [])
    assert [len(c) for c in adapter.calls] == [3, 3] and adapter.resets == []


def test_batch_size_argument_overrides_the_config():
    adapter = FakeAdapter(batch_size=4)
    run_stream(adapter, ArraySource(vectors(7)), [], batch_size=3)
    assert [len(c) for c in adapter.calls] == [3, 3, 1]


def test_every_item_yields_exactly_one_record_even_when_it_cannot_be_stacked():
    items = [
        Item(np.array([1.0, 0.0], np.float32), label=0, position="a"),
        Item(np.array([0.0, 1.0, 2.0], np.float32), label=1, position="b"),  # wrong shape
        Item(None, position="c", error="frame 3 could not be decoded"),  # unreadable
        Item(np.array([np.nan, 0.0], np.float32), label=1, position="d"),  # non-finite
        Item(np.array([0.0, 2.0], np.float32), label=1, position="e"),
        Item(np.array(["x", "y"]), position="f"),  # not numeric
    ]
    adapter = FakeAdapter(batch_size=8)
    collector = Collector()
    summary = run_stream(adapter, ListSource(items), [collector])
    records = collector.records
    assert [r.position for r in records] == ["a", "b", "c", "d", "e", "f"]
    assert [r.index for r in records] == list(range(6))
    assert [r.pred for r in records] == [0, None, None, None, 1, None]
    assert records[1].skip == "shape (3,) != (2,)"
    assert records[2].skip == "frame 3 could not be decoded"
    assert records[3].skip == "non-finite values in input"
    assert "not numeric" in records[5].skip
    assert [r.class_name for r in records] == ["c0", None, None, None, "c1", None]
    # The stackable rows went to the adapter together, the odd-shaped one on its own.
    assert sorted(len(c) for c in adapter.calls) == [1, 3]
    assert summary.samples == 6 and summary.processed == 2 and summary.skipped == 4
    assert summary.labelled == 2 and summary.accuracy == 1.0
    assert list(summary.skip_reasons) == [
        "shape (3,) != (2,)",
        "frame 3 could not be decoded",
        "non-finite values in input",
        "input of dtype <U1 is not numeric",
    ]


def test_skip_reasons_are_counted_most_common_first():
    x = vectors(10)
    x[[1, 4, 7]] = np.nan
    adapter = FakeAdapter(batch_size=5)
    items = list(ArraySource(x))
    items.append(Item(np.zeros(3, np.float32), position=10))
    items.append(Item(np.zeros(3, np.float32), position=11))
    items.append(Item(None, position=12, error="timeout"))
    summary = run_stream(adapter, ListSource(items), [])
    assert list(summary.skip_reasons.items()) == [
        ("non-finite values in input", 3),
        ("shape (3,) != (2,)", 2),
        ("timeout", 1),
    ]
    assert summary.skipped == 6 and summary.processed == 7


def test_integer_and_float_items_are_never_stacked_together():
    items = [Item(np.array([1, 0], np.uint8)), Item(np.array([0.0, 1.0], np.float32)), Item(np.array([3, 1], np.uint8))]
    adapter = FakeAdapter(batch_size=3)
    run_stream(adapter, ListSource(items), [])
    assert sorted((c.dtype.str, len(c)) for c in adapter.calls) == [("<f4", 1), ("|u1", 2)]


def test_events_come_before_their_batch_records_and_summary_counts_the_run_only():
    adapter = FakeAdapter(batch_size=4)
    adapter.totals["updates"] = 10  # an adapter reused from an earlier stream
    adapter.totals["backward_passes"] = 10
    collector = Collector()
    y = np.array([0, 1, 0, 1, 1, 1, 0, 0, 1, 0])
    x = np.eye(2, dtype=np.float32)[y]
    x[9] = x[9][::-1]  # one wrong prediction
    summary = run_stream(adapter, ArraySource(x, y, name="s"), [collector])
    assert collector.event_indices()["step"] == [0, 4, 8]
    assert collector.event_indices()["gate"] == [0, 4]
    assert summary.updates == 3 and summary.backward_passes == 3 and summary.forward_passes == 3
    assert summary.gated_samples == 6  # dropped + unreliable of two gate events
    assert summary.events == {"gate": 2, "step": 3}
    assert summary.accuracy == pytest.approx(0.9) and summary.labelled == 10
    assert summary.method == "fake_preset"  # the name the user chose, not the method
    assert summary.samples_per_second and summary.samples_per_second > 0
    assert json.loads(json.dumps(summary.to_json()))["samples"] == 10


def test_method_falls_back_to_the_method_when_the_config_has_no_name():
    adapter = FakeAdapter()
    del adapter.config.name
    assert run_stream(adapter, ArraySource(vectors(2)), []).method == "fake"


def test_labels_outside_the_model_classes_stop_the_loop_with_a_clear_error():
    adapter = FakeAdapter(num_classes=2, batch_size=2)
    with pytest.raises(DataError, match="outside 0..1"):
        run_stream(adapter, ArraySource(vectors(6), np.array([0, 1, 0, 1, 0, 2])), [])
    assert adapter.calls == []  # an array source is checked before the first batch
    live = ListSource([Item(np.zeros(2, np.float32), label=0), Item(np.zeros(2, np.float32), label=7, position=1)])
    with pytest.raises(DataError, match="label 7 at 1 is outside 0..1"):
        run_stream(FakeAdapter(num_classes=2), live, [])
    with pytest.raises(DataError, match="not an integer"):
        run_stream(FakeAdapter(), ListSource([Item(np.zeros(2, np.float32), label=1.0)]), [])  # type: ignore[arg-type]


def test_empty_source_gives_an_empty_summary():
    summary = run_stream(FakeAdapter(), ArraySource(np.zeros((0, 2), np.float32)), [])
    assert summary.samples == 0 and summary.processed == 0 and summary.accuracy is None


def test_loop_matches_plain_batching_on_the_bundled_model():
    """Same batches, same Adapter calls: predictions equal a hand-written batching loop."""
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    with np.load(ASSETS / "demo_stream.npz") as data:
        keep = np.concatenate([np.flatnonzero(data["phase"] == p)[:40] for p in (0, 1)])
        images, labels, phase = data["images"][keep], data["labels"][keep], data["phase"][keep]
    x = ((images.astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    config = load_config(method="tent", batch_size=32, method_args={"optimizer": "adam", "lr": 1e-3})
    manual = Adapter(BN_ART, config)
    expected = []
    for p in (0, 1):
        rows = np.flatnonzero(phase == p)
        for start in range(0, len(rows), 32):
            expected.append(manual.process(x[rows[start : start + 32]]).preds)
    looped = Adapter(BN_ART, config)
    collector = Collector()
    summary = run_stream(looped, ArraySource(x, labels, phase), [collector])
    np.testing.assert_array_equal(collector.preds(), np.concatenate(expected))
    assert summary.updates == manual.totals["updates"] > 0
    assert summary.accuracy == pytest.approx(float((collector.preds() == labels).mean()))


# ----------------------------------------------------------------------------------------- sinks


def test_file_sinks_write_records_events_and_probabilities(tmp_path):
    adapter = FakeAdapter(batch_size=2)
    x = vectors(3)
    x[1] = np.nan
    sinks = [
        JsonlSink(tmp_path / "p.jsonl", probabilities=True),
        EventLog(tmp_path / "e.jsonl"),
        CsvSink(tmp_path / "p.csv"),
    ]
    run_stream(adapter, ArraySource(x, np.array([0, 1, 1]), name="v"), sinks)
    for sink in sinks:
        sink.close()
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[1]["pred"] is None and rows[1]["skip"] == "non-finite values in input" and rows[1]["probs"] is None
    assert sum(rows[0]["probs"]) == pytest.approx(1.0, abs=1e-5) and rows[0]["class"] in ("c0", "c1")
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["step", "step"]
    with open(tmp_path / "p.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and table[1]["skip"] == "non-finite values in input" and table[1]["pred"] == ""
    assert table[0]["label"] == "0"


def test_plural():
    assert [plural(1, "update"), plural(2, "update"), plural(0, "update")] == ["1 update", "2 updates", "0 updates"]
    assert plural(1, "backward pass") == "1 backward pass" and plural(3, "backward pass") == "3 backward passes"


# -------------------------------------------------------------------------------------- progress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_rate_and_eta_and_clears_stale_characters():
    out = FakeTty()
    bar = Progress(100, "replay", stream=out, min_interval=0.0)
    bar.advance(50, "acc 0.912 and a long tail of text")
    bar.advance(50, "acc 0.9")
    bar.close()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) >= 2
    assert all(frame.rstrip("\n").endswith("\x1b[K") for frame in frames)  # stale text is cleared
    assert "50/100" in frames[0] and "ETA" in frames[0] and "/s" in frames[0]
    assert "100/100" in frames[-1] and text.endswith("\n")


def test_progress_is_silent_off_a_terminal():
    out = io.StringIO()
    bar = Progress(10, "replay", stream=out)
    bar.advance(10)
    bar.close()
    assert out.getvalue() == ""


def test_progress_without_a_total_counts_without_eta():
    bar = Progress(None, "live", stream=FakeTty())
    assert "ETA" not in bar.line(5, 1.0) and "5" in bar.line(5, 1.0)
