"""The signal-quality rail: rows the caller flags are predicted but never adapt the model, never enter the
sliding window's batch statistics, and never reach another rail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgetta
from edgetta import Adapter, RuntimeConfig
from edgetta.errors import ConfigError, DataError
from edgetta.safety import build_rails

ARTIFACT = Path(edgetta.__file__).parent / "assets" / "fmnist_resnet_bn"


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    with np.load(ARTIFACT.parent / "demo_stream.npz", allow_pickle=False) as data:
        images = data["images"][:48]
    return ((images.astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]


def _config(**method_args) -> RuntimeConfig:
    args = {"optimizer": "adam", "lr": 0.01, **method_args}
    return RuntimeConfig(
        method="tent", method_args=args, rails=["signal_quality", "nonfinite_guard"], batch_size=8, min_batch=4
    )


def _state(adapter: Adapter) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in adapter.state.params.items()}


def _assert_same_state(a: Adapter, b: Adapter) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        # equal up to float32 rounding (the engine may run a folded graph in one and not the other)
        np.testing.assert_allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert a.state.update_count == b.state.update_count


POISON = (3, 10, 11, 14)  # an electrode pop: huge values on these rows


def _poisoned(rows: np.ndarray) -> np.ndarray:
    x = rows.copy()
    x[list(POISON)] = 1000.0 * np.sign(x[list(POISON)] + 0.1)
    return x


@pytest.mark.parametrize("method_args", [{}, {"bn_alpha": 0.0, "bn_momentum": 0.2}], ids=["window", "bn_refresh"])
def test_flagged_rows_never_adapt_one_row_at_a_time(rows, method_args) -> None:
    """Batch 1 as at the bedside: the flagged run ends in exactly the state of a run without those rows, and
    every unflagged row is predicted exactly as if the flagged ones had never happened."""
    x = _poisoned(rows)
    flagged = Adapter(ARTIFACT, _config(**method_args))
    clean = Adapter(ARTIFACT, _config(**method_args))
    events = []
    for i in range(len(x)):
        reason = "electrode pop" if i in POISON else None
        out = flagged.process(x[i : i + 1], flags=[reason])
        events += out.events
        assert np.isfinite(out.logits).all() and out.preds[0] >= 0  # flagged rows are still staged
        assert bool(out.excluded[0]) == (i in POISON)
        if i not in POISON:
            ref = clean.process(x[i : i + 1])
            np.testing.assert_allclose(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    _assert_same_state(flagged, clean)
    assert flagged.state.update_count > 0  # the rest did adapt
    excluded = [e for e in events if e.rail == "signal_quality"]
    assert [e.data["rows"] for e in excluded] == [[0]] * len(POISON)
    assert all(e.kind == "exclude" and "electrode pop" in e.reason for e in excluded)
    assert flagged.totals["excluded"] == len(POISON)


def test_flagged_rows_in_a_large_call_are_kept_out_of_its_statistics(rows) -> None:
    x = _poisoned(rows[:16])
    flags = [("clipping" if i in POISON else None) for i in range(16)]
    keep = [i for i in range(16) if i not in POISON]
    a = Adapter(ARTIFACT, _config())
    b = Adapter(ARTIFACT, _config())
    out = a.process(x, flags=flags)
    ref = b.process(x[keep])
    np.testing.assert_allclose(out.logits[keep], ref.logits, rtol=1e-5, atol=1e-5)
    assert out.updated and np.isfinite(out.logits).all()
    _assert_same_state(a, b)
    # a call of flagged rows only changes nothing
    before = _state(a)
    out = a.process(x[:4], flags=[True] * 4)
    assert not out.updated and out.excluded.all()
    for k, v in before.items():
        np.testing.assert_array_equal(a.state.params[k], v)


def test_without_the_rail_flags_change_nothing_and_the_pop_poisons(rows) -> None:
    """The contrast that shows why the rail exists: without it a flagged pop adapts the model."""
    x = _poisoned(rows)
    config = RuntimeConfig(method="tent", method_args={"optimizer": "adam", "lr": 0.01}, batch_size=8, min_batch=4)
    plain, clean = Adapter(ARTIFACT, config), Adapter(ARTIFACT, _config())
    notes = []
    for i in range(len(x)):
        notes += [e for e in plain.process(x[i : i + 1], flags=[i in POISON]).events if e.kind == "flags"]
        clean.process(x[i : i + 1], flags=[i in POISON])
    assert len(notes) == 1 and "no rail screens them" in notes[0].reason
    differs = [not np.array_equal(plain.state.params[k], clean.state.params[k]) for k in plain.state.params]
    assert any(differs)


def test_reasons_filter_and_bad_input(rows) -> None:
    adapter = Adapter(ARTIFACT, _config())
    adapter.rails.rails[0].__init__(reasons=["flat"])  # only flat-line epochs are excluded
    out = adapter.process(rows[:4], flags=["flat line", "line noise", None, None])
    assert out.excluded.tolist() == [True, False, False, False]
    with pytest.raises(DataError, match="one flag per row"):
        adapter.process(rows[:4], flags=[None])
    with pytest.raises(ConfigError, match="list of words"):
        build_rails([{"name": "signal_quality", "reasons": "flat"}])
    with pytest.raises(ConfigError, match="signal_quality"):
        RuntimeConfig(method="frozen", rails=["signal_quality"])
