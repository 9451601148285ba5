"""``Adapter``: the object a device program drives. It owns the engine, the state, the method and
its rails; validates every batch; and checkpoints/restores everything atomically."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.runtime.artifact import Artifact, load_artifact
from edgetta.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgetta.runtime.config import RuntimeConfig
from edgetta.runtime.engine import OrtEngine
from edgetta.runtime.methods import Method, build_method
from edgetta.runtime.state import AdaptState
from edgetta.safety import RECOMMENDED_ORDER, build_rails
from edgetta.safety.base import RESET_SOURCE, Event, RailEnv


@dataclass
class BatchResult:
    """Per input row: prediction, entropy and logits, or a skip reason (never silently dropped)."""

    preds: np.ndarray  # int64 [N], -1 where skipped
    entropy: np.ndarray  # float32 [N], nan where skipped
    logits: np.ndarray  # float32 [N, C], nan where skipped
    skipped: list[str | None]  # reason per row, None when processed
    updated: bool = False
    events: list[Event] = field(default_factory=list)


class Adapter:
    def __init__(self, artifact: Artifact | str | Path, config: RuntimeConfig) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        self.config = config
        self.engine = OrtEngine(self.artifact, config.engine)
        self.state = AdaptState.from_artifact(self.artifact)
        args = dict(config.method_args)
        has_bn = any(la.kind == "batchnorm" for la in self.artifact.norm_layers)
        if config.batch_size == 1 and has_bn and config.method not in ("frozen", "lame") and "window" not in args:
            if not (config.method == "bn" and float(args.get("alpha", 1.0)) == 0.0):
                args["window"] = config.window
        self.method: Method = build_method(config.method, **args)
        # Rails run in the recommended order whatever the config order (guards first, resets last).
        rails = sorted(build_rails(config.rails), key=lambda r: RECOMMENDED_ORDER.index(r.name)
                       if r.name in RECOMMENDED_ORDER else len(RECOMMENDED_ORDER))
        if rails and not self.method.uses_gradients and config.method != "bn":
            raise ConfigError(f"rails: method {config.method} never updates parameters; remove the rails")
        env = RailEnv(
            num_classes=self.artifact.num_classes,
            source=self.state.trainable_source(),
            fisher=self.artifact.fisher,
            anchor=self.artifact.anchor,
            seed=config.seed,
        )
        self.method.bind(self.engine, self.state, rails, env)
        self.item_shape = tuple(self.artifact.input_shape[1:])
        self.batches = 0
        self.totals: Counter[str] = Counter()
        self.event_counts: Counter[str] = Counter()

    # -- processing ----------------------------------------------------------------------------
    def validate(self, x: np.ndarray) -> list[str | None]:
        if x.ndim != len(self.item_shape) + 1 or tuple(x.shape[1:]) != self.item_shape:
            reason = f"shape {tuple(x.shape[1:])} != expected {self.item_shape}"
            return [reason] * (x.shape[0] if x.ndim else 1)
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        return [None if ok else "non-finite values in input" for ok in finite]

    def process(self, x: np.ndarray) -> BatchResult:
        x = np.asarray(x)
        skipped = self.validate(x)
        n, c = len(skipped), self.artifact.num_classes
        result = BatchResult(
            np.full(n, -1, np.int64), np.full(n, np.nan, np.float32), np.full((n, c), np.nan, np.float32), skipped
        )
        good = [i for i, reason in enumerate(skipped) if reason is None]
        self.totals["skipped"] += n - len(good)
        if good:
            batch = np.ascontiguousarray(x[good], dtype=np.float32)
            out = self.method.step(batch, self.batches)
            result.logits[good] = out.logits
            result.preds[good] = np.argmax(out.logits, axis=1)
            result.entropy[good] = out.entropy
            result.updated = out.updated
            result.events = out.events
            self.totals["forward_passes"] += out.forward_passes
            self.totals["backward_passes"] += out.backward_passes
            self.totals["updates"] += int(out.updated)
            self.totals["processed"] += len(good)
            for event in out.events:
                self.event_counts[event.kind] += 1
        self.batches += 1
        return result

    def reset(self, reason: str = "requested") -> Event:
        self.method.reset(RESET_SOURCE)
        event = Event(self.batches, "runtime", "reset", reason, {"target": RESET_SOURCE})
        self.event_counts["reset"] += 1
        return event

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {f"params/{k}": v for k, v in self.state.params.items()}
        method_tensors, method_meta = self.method.method_state()
        tensors.update({f"method/{k}": v for k, v in method_tensors.items()})
        rails_meta = {}
        for i, rail in enumerate(self.method.rails):
            rail_tensors, rail_meta = rail.state()
            tensors.update({f"rail{i}/{k}": v for k, v in rail_tensors.items()})
            rails_meta[f"rail{i}"] = {"name": rail.name, **rail_meta}
        meta = {
            "method": self.config.method,
            "method_meta": method_meta,
            "rails": rails_meta,
            "update_count": self.state.update_count,
            "reset_count": self.state.reset_count,
            "batches": self.batches,
            "totals": dict(self.totals),
            "events": dict(self.event_counts),
        }
        return tensors, meta

    def save(self, path: str | Path) -> None:
        tensors, meta = self.checkpoint_payload()
        save_checkpoint(path, tensors, meta, artifact_id=self.artifact.identity)

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint. On any problem the state stays at the source parameters and the error
        (a CheckpointError naming the cause) propagates for the caller to log."""
        try:
            tensors, meta = load_checkpoint(path, artifact_id=self.artifact.identity)
            if meta.get("method") != self.config.method:
                raise CheckpointError(
                    f"checkpoint {path} was written by method {meta.get('method')!r}, "
                    f"this runtime runs {self.config.method!r}"
                )
            params = {k[len("params/") :]: v for k, v in tensors.items() if k.startswith("params/")}
            if set(params) != set(self.state.source):
                raise CheckpointError(f"checkpoint {path} does not hold this artifact's parameters")
            self.state.params = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
            self.method.load_method_state(
                {k[len("method/") :]: v for k, v in tensors.items() if k.startswith("method/")}, meta["method_meta"]
            )
            for i, rail in enumerate(self.method.rails):
                prefix = f"rail{i}/"
                rail.load_state(
                    {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
                    meta["rails"].get(f"rail{i}", {}),
                )
            self.state.update_count = int(meta["update_count"])
            self.state.reset_count = int(meta["reset_count"])
        except (CheckpointError, KeyError, ValueError) as exc:
            self.state.reset_to_source()
            self.state.reset_count -= 1
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint {path} is incomplete ({exc}); running on source parameters") from exc
