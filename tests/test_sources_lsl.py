"""The LSL source against a real outlet in this process: pylsl pushes a known 2-channel signal from a thread, the
source resolves the stream by name, picks a channel by its label and yields consecutive epochs.

liblsl is limited to this machine with a temporary lsl_api.cfg (ResolveScope = machine) named by LSLAPICFG
before the library is first used, so the test needs no network beyond the host."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

CHANNELS = ("Fpz-Cz", "Pz-Oz")
RATE = 100.0
ONE_SECOND = SimpleNamespace(input_shape=(None, 1, 100), preprocess={})


@pytest.fixture(scope="module")
def pylsl(tmp_path_factory) -> Iterator:
    config = tmp_path_factory.mktemp("lsl") / "lsl_api.cfg"
    config.write_text("[multicast]\nResolveScope = machine\n[log]\nlevel = -2\n")
    saved = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(config)
    try:
        yield pytest.importorskip("pylsl", reason="LSL sources need pylsl: pip install 'edgetta[eeg]'")
    finally:
        if saved is None:
            os.environ.pop("LSLAPICFG", None)
        else:
            os.environ["LSLAPICFG"] = saved


class Outlet:
    """An LSL outlet pushing sample n as (n, -n) in chunks of 20 at about 10x real time, until stopped."""

    def __init__(self, pylsl, name: str) -> None:
        info = pylsl.StreamInfo(name, "EEG", len(CHANNELS), RATE, "float32", f"{name}-id")
        channels = info.desc().append_child("channels")
        for label in CHANNELS:
            channels.append_child("channel").append_child_value("label", label)
        self.outlet = pylsl.StreamOutlet(info)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            values = np.arange(n, n + 20, dtype=np.float32)
            self.outlet.push_chunk(np.stack([values, -values], axis=1).tolist())
            n += 20
            time.sleep(0.02)

    def __enter__(self) -> Outlet:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def take(source, count: int, limit: float = 20.0) -> list:
    items, started = [], time.monotonic()
    for item in source:
        items.append(item)
        if len(items) >= count or time.monotonic() - started > limit:
            break
    source.close()
    return items


def test_lsl_epochs_of_a_channel_picked_by_name(pylsl):
    from edgetta.streams import open_source

    name = f"edgetta-test-{uuid.uuid4().hex[:8]}"
    events: list[str] = []
    with Outlet(pylsl, name):
        spec = {"kind": "lsl", "name": name, "channels": ["pz-oz"], "resolve_timeout": 5}
        source = open_source(spec, stream="eeg", artifact=ONE_SECOND, on_event=lambda k, m: events.append(k))
        assert source.live is True and source.total is None
        items = take(source, 4)
    assert events[0] == "connected" and source.rate == RATE and source.labels == list(CHANNELS)
    assert [it.position for it in items] == [0, 100, 200, 300]
    assert all(it.error is None and it.x.shape == (1, 100) and it.x.dtype == np.float32 for it in items)
    first = -items[0].x[0, 0]  # the inlet joins the stream mid-way: sample values continue from there
    for k, item in enumerate(items):  # channel Pz-Oz (-n), consecutive samples, nothing lost between epochs
        np.testing.assert_array_equal(item.x[0], -(first + 100 * k + np.arange(100, dtype=np.float32)))
    assert abs(items[-1].timestamp - time.time()) < 5


def test_lsl_mismatches_are_skip_items_not_crashes(pylsl):
    from edgetta.streams import open_source

    name = f"edgetta-test-{uuid.uuid4().hex[:8]}"
    with Outlet(pylsl, name):
        both = take(open_source({"kind": "lsl", "name": name}, stream="eeg", artifact=ONE_SECOND), 2)
        spec = {"kind": "lsl", "type": "EEG", "name": name, "channels": "Fpz-Cz"}
        spec["preprocess"] = {"rate": 250, "resample": False}
        wrong_rate = take(open_source(spec, stream="eeg", artifact=SimpleNamespace(input_shape=(None, 1, 250))), 2)
    assert len(both) == 2 and all(it.x is None for it in both)
    assert "2 channel(s), the model takes 1" in both[0].error
    assert len(wrong_rate) == 2 and all(it.x is None for it in wrong_rate)
    assert "sampled at 100 Hz, the model takes 250 Hz" in wrong_rate[0].error


def test_lsl_stream_not_found_gives_up_with_an_error_item(pylsl):
    from edgetta.streams import open_source

    events: list[str] = []
    spec = {
        "kind": "lsl",
        "name": "edgetta-absent",
        "resolve_timeout": 0.2,
        "reconnect": {"initial": 0.01, "attempts": 2},
    }
    items = list(open_source(spec, stream="eeg", artifact=ONE_SECOND, on_event=lambda k, m: events.append(k)))
    assert len(items) == 1 and items[0].x is None and "gave up after 2" in items[0].error
    assert events == ["not_found", "not_found", "gave_up"]


def test_lsl_marker_stream_ends_with_an_error_item(pylsl):
    from edgetta.streams import open_source

    name = f"edgetta-markers-{uuid.uuid4().hex[:8]}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Markers", 1, 0, "string", f"{name}-id"))
    items = list(open_source({"kind": "lsl", "name": name, "resolve_timeout": 5}, stream="m", artifact=ONE_SECOND))
    del outlet
    assert len(items) == 1 and items[0].x is None and "carries text (markers)" in items[0].error
