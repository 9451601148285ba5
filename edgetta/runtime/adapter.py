"""``Adapter``: the object a device program drives.

It owns the engine, the adaptation state, the method and its rail pipeline; checks every call's input;
decides per call whether the rows can be normalised on their own or go through the sliding window; and
checkpoints/restores everything at once. Its own decisions (rail order, a rail dropped, the window
switched on or off, preprocessing applied) are events like the rails', delivered with the next result.

    adapter = Adapter("artifact_dir", load_config(preset="tent"))
    result = adapter.process(frames)       # float32 [N, C, H, W] (or integers, preprocessed per manifest)
    result.preds, result.entropy, result.skipped, result.events
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetta.contract import LOGITS, Artifact, load_artifact
from edgetta.errors import CheckpointError, DataError
from edgetta.kernels import entropy as entropy_of
from edgetta.runtime.checkpoint import load_checkpoint, save_checkpoint
from edgetta.runtime.config import RuntimeConfig, build_method
from edgetta.runtime.inputs import InputPreparer
from edgetta.runtime.methods import Method, StepOutput
from edgetta.runtime.state import AdaptState
from edgetta.runtime.window import SlidingWindow
from edgetta.safety import RailPipeline, build_rails
from edgetta.safety.base import RESET_SOURCE, Event, RailEnv, RailUnavailable, ScreenContext

if TYPE_CHECKING:
    from edgetta.engines import Engine

log = logging.getLogger("edgetta")
RUNTIME = "runtime"
SOURCE_PREFIX = "source/"  # checkpoint tensors of source parameters set by set_source_params


@dataclass
class BatchResult:
    """Per input row: prediction, entropy and logits, or a skip reason (never silently dropped)."""

    preds: np.ndarray  # int64 [N], -1 where skipped
    entropy: np.ndarray  # float32 [N], nan where skipped
    logits: np.ndarray  # float32 [N, C], nan where skipped
    skipped: list[str | None]  # reason per row, None when processed
    updated: bool = False
    events: list[Event] = field(default_factory=list)
    excluded: np.ndarray | None = None  # bool [N]: predicted but kept out of adaptation (flags + a screening rail)


class Adapter:
    """Runs one artifact under one RuntimeConfig. ``engine``: any :class:`~edgetta.engines.Engine`
    (default: ONNX Runtime with ``config.engine`` options); streams of one artifact may share one."""

    def __init__(self, artifact: Artifact | str | Path, config: RuntimeConfig, engine: Engine | None = None) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        self.config = config
        if engine is None:
            from edgetta.engines import OrtEngine

            engine = OrtEngine(self.artifact, config.engine)
        self.engine: Engine = engine
        self.inputs = InputPreparer(tuple(self.artifact.input_shape[1:]), self.artifact.preprocess)
        self.batches = 0
        self.totals: Counter[str] = Counter()
        self.event_counts: Counter[str] = Counter()
        self._pending: list[Event] = []
        self._windowed: bool | None = None
        self._preprocess_noted = False
        self._flags_noted = False
        self._fallbacks_seen = 0
        self._source_override: dict[str, np.ndarray] = {}  # set_source_params: tensors replacing the artifact's
        self.source_version: int | None = None
        self._build()
        self._note_start()

    # -- construction --------------------------------------------------------------------------------
    def _build(self) -> None:
        """Fresh state at the source, a fresh method and rails: used at start and after a failed restore.
        The source is the artifact's parameters with any set by :meth:`set_source_params` in their place."""
        self.state = AdaptState.from_artifact(self.artifact)
        if self._source_override:
            self.state.source.update({k: v.copy() for k, v in self._source_override.items()})
            self.state.params = {k: v.copy() for k, v in self.state.source.items()}
        anchor = dict(self.artifact.anchor)
        anchor.update({k: v for k, v in self._source_override.items() if k in anchor})
        self.method: Method = build_method(self.config.method, self.config.method_args)
        self.rails = RailPipeline(build_rails(self.config.rails), self.method.offers(), self.config.method)
        env = RailEnv(
            num_classes=self.artifact.num_classes,
            source=dict(self.state.source),
            fisher=self.artifact.fisher,
            anchor=anchor,
            seed=self.config.seed,
            running_stats=tuple(self.state.running_stats),
        )
        self.method.bind(self.engine, self.state, self.rails, env)
        self.dropped: list[tuple[str, str]] = []
        for rail in list(self.rails.rails):
            try:
                rail.bind(env)
            except RailUnavailable as exc:
                if not rail.optional:
                    raise
                self.rails.remove(rail)
                self.dropped.append((rail.name, str(exc)))
        needs_window = self.method.needs_batch(self.artifact)
        self.window = SlidingWindow(self.config.window_size) if needs_window else None

    def _note_start(self) -> None:
        for name, why in self.dropped:
            self._note("downgrade", f"rail dropped: {why}", dropped=name)
            log.warning("edgetta: rail dropped: %s", why)
        if self.rails.rails:
            configured = [r if isinstance(r, str) else r.get("name") for r in self.config.rails]
            configured = [n for n in configured if n in self.rails.names]
            self._note("rails", f"rails run in order: {', '.join(self.rails.names)}", order=self.rails.names)
            if configured != self.rails.names:
                self._note(
                    "reorder",
                    "rails reordered by what they act on (guards, gates, gradient and proposal edits, resets)",
                    configured=configured,
                    order=self.rails.names,
                )

    def _note_engine_fallbacks(self) -> None:
        """An engine that could not use an optimised graph says why (``fallbacks``); each becomes an event."""
        fallbacks = getattr(self.engine, "fallbacks", [])
        for message in fallbacks[self._fallbacks_seen :]:
            self._note("downgrade", f"engine: {message}")
        self._fallbacks_seen = len(fallbacks)

    def _note(self, kind: str, reason: str, **data: Any) -> None:
        self._pending.append(Event(self.batches, RUNTIME, kind, reason, data))

    # -- processing ------------------------------------------------------------------------------------
    def process(self, x: Any, flags: Any = None) -> BatchResult:
        """Predict (and adapt on) one call's rows. Bad rows get a skip reason and never reach the model.

        ``flags`` (optional, one per row: a reason string, True, or None/False = fine) marks rows the caller
        does not trust (a signal-quality check). Rails that screen (``signal_quality``) exclude them: they
        are predicted, with the current state, but never enter an update, the sliding window or any batch
        whose statistics the model normalises with or adapts to. Without such a rail flags change nothing."""
        prepared = self.inputs.prepare(x)
        n, c = len(prepared.skipped), self.artifact.num_classes
        result = BatchResult(
            np.full(n, -1, np.int64),
            np.full(n, np.nan, np.float32),
            np.full((n, c), np.nan, np.float32),
            prepared.skipped,
        )
        if prepared.preprocessed and not self._preprocess_noted:
            self._preprocess_noted = True
            self._note(
                "preprocess", f"integer input mapped with the artifact's preprocessing ({self.inputs.describe()})"
            )
        good = prepared.index
        self.totals["skipped"] += n - len(good)
        exclude = self._screen(flags, n, good, result)
        if len(good):
            out = self._step_excluding(prepared.rows, exclude) if exclude.any() else self._step(prepared.rows)
            result.logits[good] = out.logits
            result.preds[good] = np.argmax(out.logits, axis=1)
            result.entropy[good] = out.entropy
            result.updated = out.updated
            result.events.extend(out.events)
            self.totals["forward_passes"] += out.forward_passes
            self.totals["backward_passes"] += out.backward_passes
            self.totals["updates"] += int(out.updated)
            self.totals["processed"] += len(good)
        self._note_engine_fallbacks()
        result.events[:0] = self._pending
        self._pending = []
        for event in result.events:
            self.event_counts[event.kind] += 1
        self.batches += 1
        return result

    def _screen(self, flags: Any, n: int, good: np.ndarray, result: BatchResult) -> np.ndarray:
        """Per good row: excluded from adaptation (caller's flags, decided by the screening rails)."""
        exclude = np.zeros(len(good), bool)
        if flags is None:
            return exclude
        if isinstance(flags, (str, bytes)) or len(flags) != n:
            got = "a string" if isinstance(flags, (str, bytes)) else f"{len(flags)} flags"
            raise DataError(f"flags: {got} for {n} rows; pass one flag per row (a reason, True, or None)")
        reasons = [None if f is None or f is False else ("flagged" if f is True else str(f)) for f in flags]
        if not self.rails.screens:
            if any(reasons) and not self._flags_noted:
                self._flags_noted = True
                self._note("flags", "rows are flagged but no rail screens them (add signal_quality to rails)")
            return exclude
        ctx = ScreenContext(self.batches, [reasons[i] for i in good], exclude)
        self.rails.screen(ctx)
        result.events.extend(ctx.events)
        full = np.zeros(n, bool)
        full[good] = ctx.exclude
        result.excluded = full
        self.totals["excluded"] += int(ctx.exclude.sum())
        return np.asarray(ctx.exclude, bool)

    def _step_excluding(self, rows: np.ndarray, exclude: np.ndarray) -> StepOutput:
        """Adapt on the rows kept; predict the excluded ones afterwards without any update."""
        n, keep = len(rows), ~exclude
        logits = np.empty((n, self.artifact.num_classes), np.float32)
        entropy = np.empty(n, np.float32)
        out = StepOutput(logits, entropy)
        if keep.any():
            kept = self._step(rows[keep])
            logits[keep], entropy[keep] = kept.logits, kept.entropy
            out.updated, out.events = kept.updated, kept.events
            out.forward_passes, out.backward_passes = kept.forward_passes, kept.backward_passes
        flagged = self._predict_only(rows[exclude])
        logits[exclude], entropy[exclude] = flagged.logits, flagged.entropy
        out.forward_passes += flagged.forward_passes
        return out

    def _predict_only(self, rows: np.ndarray) -> StepOutput:
        """Predictions that change nothing: with a window, inside the rows it holds (the flagged rows are not
        added to it); a call that cannot update."""
        if self.window is None:
            return self.method.step(rows, self.batches, update=False)
        context = [np.stack(self.window.rows)] if len(self.window) else []
        batch = np.concatenate([*context, rows])
        if len(batch) < self.config.min_batch:
            return self._source_prediction(rows)
        out = self.method.step(batch, self.batches, update=False)
        out.logits, out.entropy = out.logits[-len(rows) :], out.entropy[-len(rows) :]
        return out

    def _step(self, rows: np.ndarray) -> StepOutput:
        """The method's step on ``rows``, through the sliding window when the call is too small."""
        n = len(rows)
        small = self.window is not None and n < self.config.min_batch
        self._note_window(small, n)
        if not small:
            if self.window is not None:
                self.window.observe(rows)
            return self.method.step(rows, self.batches, update=True)
        batch, update = self.window.push(rows)
        if len(batch) < self.config.min_batch:
            # Too few rows seen yet to normalise with their statistics: predict like the source model.
            return self._source_prediction(rows)
        out = self.method.step(batch, self.batches, update=update)
        out.logits, out.entropy = out.logits[-n:], out.entropy[-n:]
        return out

    def _source_prediction(self, rows: np.ndarray) -> StepOutput:
        logits = self.engine.infer(rows, self.state.params, 0.0, outputs=[LOGITS])[LOGITS]
        return StepOutput(logits, entropy_of(logits), forward_passes=1)

    def _note_window(self, small: bool, n: int) -> None:
        if self.window is None or small == self._windowed:
            return
        if small:
            self._note(
                "window",
                f"call of {n} rows < min_batch {self.config.min_batch}: predicting inside a sliding window of the "
                f"last {self.window.size} rows, one update per {self.window.size} new rows",
                rows=n,
                window=self.window.size,
            )
        elif self._windowed is not None:
            self._note("window", f"call of {n} rows: normalising with its own statistics again", rows=n)
        self._windowed = small

    def reset(self, reason: str = "requested") -> Event:
        """Back to the source parameters and statistics (rails and optimiser cleared, window emptied)."""
        self.method.reset(RESET_SOURCE)
        if self.window is not None:
            self.window.clear()
        event = Event(self.batches, RUNTIME, "reset", reason, {"target": RESET_SOURCE})
        self.event_counts["reset"] += 1
        return event

    def set_source_params(self, params: Mapping[str, np.ndarray], version: int | None = None) -> Event:
        """Make the artifact's parameters with ``params`` in place of the named tensors the new source (a
        signed bundle's content, docs/bundles.md) and reset to it: current parameters, optimiser, rails and
        window start over from the new source, and later resets and rails restore to it. Each call starts
        from the artifact's own values, so tensors a bundle does not carry keep the artifact's values.
        ``version``: the bundle version, kept in checkpoints. The event is also delivered with the next result."""
        problems = [
            f"{k!r} is not a parameter of this artifact"
            if k not in self.artifact.params
            else f"{k!r} has shape {np.shape(v)}, the artifact's is {self.artifact.params[k].shape}"
            for k, v in params.items()
            if k not in self.artifact.params or np.shape(v) != self.artifact.params[k].shape
        ]
        values = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()} if not problems else {}
        if any(not np.isfinite(v).all() for v in values.values()):
            problems.append("values are not all finite")
        if problems:
            raise DataError("cannot set source parameters: " + "; ".join(problems))
        self._source_override, self.source_version = values, version
        self._build()
        event = Event(
            self.batches,
            RUNTIME,
            "source",
            f"new source parameters ({len(values)} tensors, bundle version {version}); adaptation restarts from them",
            {"version": version, "tensors": len(values)},
        )
        self._pending.append(event)
        return event

    # -- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {f"params/{k}": v for k, v in self.state.params.items()}
        tensors.update({f"{SOURCE_PREFIX}{k}": v for k, v in self._source_override.items()})
        method_tensors, method_meta = self.method.method_state()
        tensors.update({f"method/{k}": v for k, v in method_tensors.items()})
        rail_tensors, rails_meta = self.rails.state()
        tensors.update(rail_tensors)
        window_meta = None
        if self.window is not None:
            window_tensors, window_meta = self.window.state()
            tensors.update({f"window/{k}": v for k, v in window_tensors.items()})
        meta = {
            "method": self.config.method,
            "recipe": self.config.name,
            "method_meta": method_meta,
            "rails": rails_meta,
            "window": window_meta,
            "update_count": self.state.update_count,
            "reset_count": self.state.reset_count,
            "batches": self.batches,
            "totals": dict(self.totals),
            "events": dict(self.event_counts),
        }
        if self._source_override or self.source_version is not None:
            meta["source_version"] = self.source_version
        return tensors, meta

    def save(self, path: str | Path) -> None:
        tensors, meta = self.checkpoint_payload()
        save_checkpoint(path, tensors, meta, artifact_id=self.artifact.identity)

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint, all of it or nothing: on any problem the whole state (parameters, statistics,
        optimiser, rails, window) is back at the source and a CheckpointError names the cause. Source
        parameters set by :meth:`set_source_params` come back with the checkpoint that holds them."""
        before = (self._source_override, self.source_version)
        try:
            tensors, meta = load_checkpoint(path, artifact_id=self.artifact.identity)
            self._check(path, tensors, meta)
            source = {k[len(SOURCE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SOURCE_PREFIX)}
            version = meta.get("source_version")
            if source or before[0] or version != before[1]:
                self._source_override = {k: np.array(v, np.float32, copy=True) for k, v in source.items()}
                self.source_version = None if version is None else int(version)
                self._build()
            self._load(tensors, meta)
        except Exception as exc:
            self._source_override, self.source_version = before
            self._build()
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint {path} is incomplete ({exc}); running on source parameters") from exc

    def _check(self, path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Every mismatch is found before anything is changed."""
        if meta.get("method") != self.config.method:
            raise CheckpointError(
                f"checkpoint {path} was written by method {meta.get('method')!r}, this runtime runs "
                f"{self.config.method!r}; running on source parameters"
            )
        params = {k[len("params/") :]: v for k, v in tensors.items() if k.startswith("params/")}
        if set(params) != set(self.state.source) or any(
            np.shape(v) != np.shape(self.state.source[k]) for k, v in params.items()
        ):
            raise CheckpointError(f"checkpoint {path} does not hold this artifact's parameters")
        source = {k[len(SOURCE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SOURCE_PREFIX)}
        if any(
            k not in self.state.source or np.shape(v) != np.shape(self.artifact.params[k]) for k, v in source.items()
        ):
            raise CheckpointError(f"checkpoint {path} holds source parameters this artifact does not have")
        try:
            self.rails.check_state(meta.get("rails") or {})
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}; running on source parameters") from None
        if (meta.get("window") is None) != (self.window is None):
            raise CheckpointError(f"checkpoint {path}: sliding window state does not match this configuration")

    def _load(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        def under(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.state.params = {k: np.ascontiguousarray(v, np.float32) for k, v in under("params/").items()}
        self.method.load_method_state(under("method/"), meta["method_meta"])
        self.rails.load_state(tensors, meta["rails"])
        if self.window is not None:
            self.window.load_state(under("window/"), meta["window"])
        self.state.update_count = int(meta["update_count"])
        self.state.reset_count = int(meta["reset_count"])
        self.batches = int(meta.get("batches", 0))
        self.totals = Counter({k: int(v) for k, v in meta.get("totals", {}).items()})
        self.event_counts = Counter({k: int(v) for k, v in meta.get("events", {}).items()})
