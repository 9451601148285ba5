"""Prometheus metrics of one daemon, in a private registry (several daemons may live in one process).

prometheus-client is imported only when metrics are configured (``pip install 'edgetta[daemon]'``);
without a ``metrics`` section :class:`NullMetrics` takes every call and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from edgetta.streams.extras import MissingExtra

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("starting", "running", "finished", "failed", "stopped")
ENTROPY_EMA = 0.05  # weight of each new batch's mean entropy in edgetta_entropy_ema

# Every metric and its labels (counters carry the _total suffix in the exposition).
METRIC_LABELS: dict[str, tuple[str, ...]] = {
    "edgetta_items_total": ("stream", "outcome"),
    "edgetta_updates_total": ("stream",),
    "edgetta_resets_total": ("stream", "reason"),
    "edgetta_rail_events_total": ("stream", "rail", "action"),
    "edgetta_entropy_ema": ("stream",),
    "edgetta_queue_depth": ("stream",),
    "edgetta_dropped_total": ("stream", "reason"),
    "edgetta_latency_seconds": ("stream", "stage"),
    "edgetta_checkpoints_total": ("stream",),
    "edgetta_stream_state": ("stream", "state"),
    "edgetta_source_events_total": ("stream", "event"),
    "edgetta_sync_samples_total": ("outcome",),
    "edgetta_sync_excluded_total": ("reason",),
    "edgetta_sync_queue_depth": (),
    "edgetta_sync_queue_bytes": (),
    "edgetta_sync_bundle_version": (),
    "edgetta_sync_bundles_total": ("outcome",),
    "edgetta_sync_bundle_rejects_total": ("code",),
    "edgetta_sync_bytes_total": ("direction",),
    "edgetta_sync_failures_total": ("stage",),
}


class NullMetrics:
    """The metrics interface, doing nothing (metrics disabled)."""

    def items(self, stream: str, outcome: str, n: int = 1) -> None: ...

    def updates(self, stream: str, n: int) -> None: ...

    def reset(self, stream: str, reason: str) -> None: ...

    def rail_event(self, stream: str, rail: str, action: str) -> None: ...

    def entropy(self, stream: str, mean_entropy: float) -> None: ...

    def queue_depth(self, stream: str, depth: Callable[[], float]) -> None: ...

    def dropped(self, stream: str, reason: str, n: int = 1) -> None: ...

    def latency(self, stream: str, stage: str, seconds: float) -> None: ...

    def checkpoint(self, stream: str) -> None: ...

    def state(self, stream: str, state: str) -> None: ...

    def source_event(self, stream: str, event: str) -> None: ...

    # cloud-edge sync (edgetta.sync): one device, so no stream label
    def sync_samples(self, outcome: str, n: int) -> None: ...

    def sync_excluded(self, reason: str, n: int) -> None: ...

    def sync_queue(self, depth: Callable[[], float], nbytes: Callable[[], float]) -> None: ...

    def sync_bundle_version(self, version: int | None) -> None: ...

    def sync_bundle(self, outcome: str) -> None: ...

    def sync_reject(self, code: str) -> None: ...

    def sync_bytes(self, direction: str, n: int) -> None: ...

    def sync_failure(self, stage: str) -> None: ...

    def render(self) -> tuple[bytes, str]:
        return b"", "text/plain"


class Metrics(NullMetrics):
    """The daemon's metrics (names in :data:`METRIC_NAMES`), labelled by stream."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise MissingExtra(
                "metrics need prometheus-client, which is not installed; install it with: "
                "pip install 'edgetta[daemon]' (or remove the metrics section)"
            ) from exc
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self._items = prom.Counter(
            "edgetta_items",
            "Items taken from a source, by outcome (processed, skipped)",
            ["stream", "outcome"],
            registry=r,
        )
        self._updates = prom.Counter("edgetta_updates", "Adaptation updates applied", ["stream"], registry=r)
        self._resets = prom.Counter(
            "edgetta_resets",
            "Resets of the adaptation state, by the rail (or runtime) that asked",
            ["stream", "reason"],
            registry=r,
        )
        self._rail_events = prom.Counter(
            "edgetta_rail_events",
            "Rail and runtime decisions, by rail and kind",
            ["stream", "rail", "action"],
            registry=r,
        )
        self._entropy = prom.Gauge(
            "edgetta_entropy_ema", "Exponential moving average of the prediction entropy (nats)", ["stream"], registry=r
        )
        self._queue = prom.Gauge("edgetta_queue_depth", "Items waiting in the stream's queue", ["stream"], registry=r)
        self._dropped = prom.Counter(
            "edgetta_dropped", "Items lost before the model, by reason", ["stream", "reason"], registry=r
        )
        self._latency = prom.Histogram(
            "edgetta_latency_seconds",
            "Latency by stage: queue (read to batch), model (one adapter call), item (read to record written), "
            "checkpoint (one commit)",
            ["stream", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._checkpoints = prom.Counter("edgetta_checkpoints", "Checkpoints committed", ["stream"], registry=r)
        self._state = prom.Gauge(
            "edgetta_stream_state",
            "1 for the stream's current state (starting, running, finished, failed, stopped)",
            ["stream", "state"],
            registry=r,
        )
        self._source_events = prom.Counter(
            "edgetta_source_events", "Connects, disconnects, give-ups of live sources", ["stream", "event"], registry=r
        )
        self._ema: dict[str, float] = {}
        self._sync_samples = prom.Counter(
            "edgetta_sync_samples",
            "Cloud sync: inputs seen, selected for upload, uploaded, dropped (queue full) or refused by the server",
            ["outcome"],
            registry=r,
        )
        self._sync_excluded = prom.Counter(
            "edgetta_sync_excluded", "Cloud sync: inputs CEMA's selection kept back, by reason", ["reason"], registry=r
        )
        self._sync_queue = prom.Gauge("edgetta_sync_queue_depth", "Cloud sync: samples waiting to upload", registry=r)
        self._sync_queue_bytes = prom.Gauge(
            "edgetta_sync_queue_bytes", "Cloud sync: bytes of samples waiting to upload", registry=r
        )
        self._sync_version = prom.Gauge(
            "edgetta_sync_bundle_version", "Cloud sync: version of the applied bundle (-1: none)", registry=r
        )
        self._sync_bundles = prom.Counter(
            "edgetta_sync_bundles", "Cloud sync: bundles applied or rejected", ["outcome"], registry=r
        )
        self._sync_rejects = prom.Counter(
            "edgetta_sync_bundle_rejects", "Cloud sync: rejected bundles by reason code", ["code"], registry=r
        )
        self._sync_bytes = prom.Counter(
            "edgetta_sync_bytes",
            "Cloud sync: bytes sent (up) and bundle bytes received (down)",
            ["direction"],
            registry=r,
        )
        self._sync_failures = prom.Counter(
            "edgetta_sync_failures", "Cloud sync: failed uploads and polls", ["stage"], registry=r
        )

    def items(self, stream: str, outcome: str, n: int = 1) -> None:
        if n:
            self._items.labels(stream, outcome).inc(n)

    def updates(self, stream: str, n: int) -> None:
        self._updates.labels(stream).inc(n)  # also creates the series at 0

    def reset(self, stream: str, reason: str) -> None:
        self._resets.labels(stream, reason).inc()

    def rail_event(self, stream: str, rail: str, action: str) -> None:
        self._rail_events.labels(stream, rail, action).inc()

    def entropy(self, stream: str, mean_entropy: float) -> None:
        old = self._ema.get(stream)
        value = mean_entropy if old is None else (1 - ENTROPY_EMA) * old + ENTROPY_EMA * mean_entropy
        self._ema[stream] = value
        self._entropy.labels(stream).set(value)

    def queue_depth(self, stream: str, depth: Callable[[], float]) -> None:
        self._queue.labels(stream).set_function(depth)

    def dropped(self, stream: str, reason: str, n: int = 1) -> None:
        self._dropped.labels(stream, reason).inc(n)

    def latency(self, stream: str, stage: str, seconds: float) -> None:
        self._latency.labels(stream, stage).observe(seconds)

    def checkpoint(self, stream: str) -> None:
        self._checkpoints.labels(stream).inc()

    def state(self, stream: str, state: str) -> None:
        for name in STATES:
            self._state.labels(stream, name).set(1.0 if name == state else 0.0)

    def source_event(self, stream: str, event: str) -> None:
        self._source_events.labels(stream, event).inc()

    def sync_samples(self, outcome: str, n: int) -> None:
        self._sync_samples.labels(outcome).inc(n)

    def sync_excluded(self, reason: str, n: int) -> None:
        self._sync_excluded.labels(reason).inc(n)

    def sync_queue(self, depth: Callable[[], float], nbytes: Callable[[], float]) -> None:
        self._sync_queue.set_function(depth)
        self._sync_queue_bytes.set_function(nbytes)

    def sync_bundle_version(self, version: int | None) -> None:
        self._sync_version.set(-1 if version is None else version)

    def sync_bundle(self, outcome: str) -> None:
        self._sync_bundles.labels(outcome).inc()

    def sync_reject(self, code: str) -> None:
        self._sync_rejects.labels(code).inc()

    def sync_bytes(self, direction: str, n: int) -> None:
        self._sync_bytes.labels(direction).inc(n)

    def sync_failure(self, stage: str) -> None:
        self._sync_failures.labels(stage).inc()

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


def make_metrics(enabled: bool) -> NullMetrics:
    return Metrics() if enabled else NullMetrics()
