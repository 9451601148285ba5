"""Applying verified bundles on the device through two slots, A and B (docs/bundles.md, "Applying").

A slot folder holds ``slot-a.safetensors``, ``slot-b.safetensors`` and ``state.json`` (which slot is active,
the applied version, the sha256 of each committed slot file, the last outcome). An apply stages the bundle's
tensors into the inactive slot (atomic write: temp file, fsync, rename, fsync of the folder), runs a health
check on a recent window of inputs, then either commits, by atomically replacing ``state.json`` so that it
names the new slot, or rolls back, leaving the active slot and the running parameters untouched. A crash at
any point leaves ``state.json`` naming a complete, hash-checked slot (or none), which :meth:`SlotStore.recover`
returns at start. Torch-free: numpy, safetensors and the engine the adapter already runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from edgetta.atomic_io import write_atomic
from edgetta.contract import LOGITS, Artifact
from edgetta.errors import BundleRejected, CheckpointError, ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.sync.bundle import MAX_BUNDLE_BYTES, TrustedKey, VerifiedBundle, base_sha256, check_params, verify_bundle

if TYPE_CHECKING:
    from edgetta.runtime.adapter import Adapter

__all__ = [
    "ApplyResult",
    "HealthPolicy",
    "HealthReport",
    "Recovery",
    "SlotStore",
    "Staged",
    "apply_bundle",
    "apply_verified",
    "check_candidate",
    "health_check",
    "resume",
    "write_atomic",
]

log = logging.getLogger("edgetta.sync")
STATE_FILE = "state.json"
STATE_FORMAT = "edgetta.slots"
STATE_VERSION = 1
SLOTS = ("a", "b")
_SLOT_META = "edgetta.slot"


# -- health check ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthPolicy:
    """When a staged bundle may replace the running parameters, judged on a recent window of inputs.

    ``min_rows``: fewer recent inputs than this and the apply is deferred (code ``window_too_small``);
    ``max_entropy_ratio``/``entropy_slack``: the candidate's mean entropy may be at most
    ratio * current + slack * ln C; ``max_class_fraction``: the candidate may not put more than this share of
    the window into one class while the current parameters stay at or under it (prediction collapse)."""

    min_rows: int = 16
    max_entropy_ratio: float = 1.2
    entropy_slack: float = 0.02
    max_class_fraction: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) or self.min_rows < 1:
            raise ConfigError(f"health min_rows must be an integer >= 1, got {self.min_rows!r}")
        for name, low in (("max_entropy_ratio", 1.0), ("entropy_slack", 0.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ConfigError(f"health {name} must be a finite number >= {low}, got {value!r}")
        if not 0.0 < self.max_class_fraction <= 1.0:
            raise ConfigError(f"health max_class_fraction must lie in (0, 1], got {self.max_class_fraction!r}")


@dataclass(frozen=True)
class HealthReport:
    """``ok`` or the first failed check's ``code`` (window_too_small, non_finite_output, entropy, collapse)."""

    ok: bool
    code: str
    reason: str
    stats: dict[str, float] = field(default_factory=dict)


def _class_fraction(logits: np.ndarray, num_classes: int) -> float:
    preds = np.argmax(logits, axis=1)
    return float(np.bincount(preds, minlength=num_classes).max() / len(preds))


def health_check(current: np.ndarray, candidate: np.ndarray, policy: HealthPolicy = HealthPolicy()) -> HealthReport:
    """Compare the candidate's logits with the current parameters' logits on the same window rows."""
    rows, num_classes = candidate.shape
    if rows < policy.min_rows:
        return HealthReport(False, "window_too_small", f"{rows} recent inputs, the check needs {policy.min_rows}")
    finite = np.isfinite(candidate).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        return HealthReport(False, "non_finite_output", f"{bad} of {rows} outputs are not finite", {"rows": rows})
    cand_h = float(entropy_of(candidate.astype(np.float32)).mean())
    good = np.isfinite(current).all(axis=1)
    curr_h = float(entropy_of(current[good].astype(np.float32)).mean()) if good.any() else math.nan
    cand_frac = _class_fraction(candidate, num_classes)
    curr_frac = _class_fraction(current[good], num_classes) if good.any() else 1.0
    stats = {
        "rows": float(rows),
        "entropy_candidate": cand_h,
        "entropy_current": curr_h,
        "max_class_fraction_candidate": cand_frac,
        "max_class_fraction_current": curr_frac,
    }
    bound = policy.max_entropy_ratio * curr_h + policy.entropy_slack * math.log(num_classes)
    if math.isfinite(curr_h) and cand_h > bound:
        return HealthReport(
            False,
            "entropy",
            f"mean entropy {cand_h:.4f} on the last {rows} inputs is above the bound {bound:.4f} "
            f"({policy.max_entropy_ratio:g} x current {curr_h:.4f} + {policy.entropy_slack:g} ln C)",
            stats,
        )
    if cand_frac > policy.max_class_fraction >= curr_frac:
        return HealthReport(
            False,
            "collapse",
            f"{cand_frac:.0%} of the last {rows} inputs fall into one class (current parameters: {curr_frac:.0%}, "
            f"limit {policy.max_class_fraction:.0%})",
            stats,
        )
    return HealthReport(True, "ok", f"healthy on the last {rows} inputs", stats)


def check_candidate(
    adapter: Adapter, params: Mapping[str, np.ndarray], window: np.ndarray, policy: HealthPolicy = HealthPolicy()
) -> HealthReport:
    """Run the adapter's engine on ``window`` (model-ready rows) with its current parameters and with the
    artifact's parameters overlaid by ``params``, both normalised the way its method normalises."""
    rows = np.asarray(window, dtype=np.float32)
    if rows.ndim < 2 or len(rows) < policy.min_rows:
        return HealthReport(False, "window_too_small", f"{len(rows)} recent inputs, the check needs {policy.min_rows}")
    candidate = {**adapter.artifact.params, **params}
    candidate = {k: np.ascontiguousarray(v, np.float32) for k, v in candidate.items()}
    bn_alpha = float(getattr(adapter.method, "bn_alpha", 0.0))
    current_logits = adapter.engine.infer(rows, adapter.state.params, bn_alpha, outputs=[LOGITS])[LOGITS]
    candidate_logits = adapter.engine.infer(rows, candidate, bn_alpha, outputs=[LOGITS])[LOGITS]
    return health_check(current_logits, candidate_logits, policy)


# -- slots ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Staged:
    """A bundle written to the inactive slot, not yet committed."""

    slot: str
    version: int
    sha256: str
    key_id: str


@dataclass(frozen=True)
class Recovery:
    """What :meth:`SlotStore.recover` found: the active slot's version and tensors (None: the artifact's own
    parameters), the applied version (rollback protection) and a note on anything it repaired."""

    version: int | None
    params: dict[str, np.ndarray] | None
    applied_version: int | None
    note: str


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _empty_state(base: str) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "base_sha256": base,
        "active": None,
        "applied_version": None,
        "slots": {slot: None for slot in SLOTS},
        "last": None,
    }


class SlotStore:
    """The A/B slots of one device for one base artifact, in folder ``root`` (created when missing).
    Construction runs :meth:`recover`; its result is in ``recovery``."""

    def __init__(self, root: str | os.PathLike[str], artifact: Artifact) -> None:
        self.root = Path(root)
        self.artifact = artifact
        self.base = base_sha256(artifact)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = _empty_state(self.base)
        self.recovery = self.recover()

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def slot_path(self, slot: str) -> Path:
        return self.root / f"slot-{slot}.safetensors"

    @property
    def active(self) -> str | None:
        return self.state["active"]

    @property
    def applied_version(self) -> int | None:
        """The version of the last committed bundle (None: none yet): verification refuses any bundle at or
        below it, even after the active slot had to be given up."""
        return self.state["applied_version"]

    @property
    def last(self) -> dict[str, Any] | None:
        """The last outcome: committed, rolled back or rejected, with its code and reason."""
        return self.state["last"]

    # -- reading -------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"slot state {self.state_path} is unreadable ({exc}); delete it to start again from the "
                "artifact's parameters (the next newer bundle is then applied)"
            ) from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise CheckpointError(f"{self.state_path} is not an edgetta slot state (format {STATE_FORMAT!r})")
        missing = [k for k in ("base_sha256", "active", "applied_version", "slots", "last") if k not in data]
        if missing or not isinstance(data["slots"], dict) or set(data["slots"]) != set(SLOTS):
            raise CheckpointError(f"{self.state_path} is incomplete (missing {missing}); delete it to start again")
        applied = data["applied_version"]
        if data["active"] not in (None, *SLOTS) or not (applied is None or _is_version(applied)):
            raise CheckpointError(f"{self.state_path} names an unknown slot or version; delete it to start again")
        return data

    def _load_slot(self, slot: str) -> dict[str, np.ndarray] | None:
        """The tensors of a committed slot when its file matches the recorded sha256 and version, else None."""
        record = self.state["slots"].get(slot)
        if not isinstance(record, dict):
            return None
        try:
            blob = self.slot_path(slot).read_bytes()
        except OSError:
            return None
        if len(blob) > MAX_BUNDLE_BYTES or hashlib.sha256(blob).hexdigest() != record.get("sha256"):
            return None
        try:
            params = {k: np.array(v, copy=True) for k, v in st_load(blob).items()}
            check_params(params, self.artifact)
        except Exception:  # a damaged slot is given up, never trusted
            return None
        return params

    def recover(self) -> Recovery:
        """Come back on a consistent slot after a start or a crash: remove half-written temp files, read
        ``state.json``, check the active slot's file against its recorded sha256; when it does not match
        (damage, not a crash: every write is atomic) fall back to the other committed slot, else to the
        artifact's parameters. The applied version never goes down."""
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        state = self._read_state()
        if state is None:
            self.state = _empty_state(self.base)
            return Recovery(None, None, None, "no bundle applied yet")
        if state["base_sha256"] != self.base:
            self.state = _empty_state(self.base)
            self._persist()
            return Recovery(None, None, None, "slots held bundles for another base artifact; starting again")
        self.state = state
        active = state["active"]
        applied = state["applied_version"]
        if active is None:
            return Recovery(None, None, applied, "no bundle active")
        params = self._load_slot(active)
        if params is not None:
            version = state["slots"][active]["version"]
            return Recovery(version, params, applied, f"slot {active} active, bundle version {version}")
        other = SLOTS[1 - SLOTS.index(active)]
        fallback = self._load_slot(other)
        self.state["active"] = other if fallback is not None else None
        self.state["slots"][active] = None
        self._persist()
        if fallback is not None:
            version = state["slots"][other]["version"]
            note = f"slot {active} is damaged; back on slot {other}, bundle version {version}"
            log.warning("edgetta sync: %s", note)
            return Recovery(version, fallback, applied, note)
        note = f"slot {active} is damaged and no other slot is committed; running on the artifact's parameters"
        log.warning("edgetta sync: %s", note)
        return Recovery(None, None, applied, note)

    def active_params(self) -> dict[str, np.ndarray] | None:
        """The committed tensors of the active slot (None when no bundle is active or it is damaged)."""
        return None if self.active is None else self._load_slot(self.active)

    # -- writing ---------------------------------------------------------------------------------------------
    def _write_state(self, state: dict[str, Any] | None = None) -> None:
        """Persist ``state`` (default: the current one); the in-memory state changes only once it is on disk."""
        state = self.state if state is None else state
        write_atomic(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode() + b"\n")
        self.state = state

    def stage(self, bundle: VerifiedBundle) -> Staged:
        """Write the bundle's tensors into the inactive slot (the active one is never touched)."""
        slot = "a" if self.active is None else SLOTS[1 - SLOTS.index(self.active)]
        meta = {"version": bundle.version, "key_id": bundle.key_id, "payload_sha256": bundle.metadata["payload_sha256"]}
        blob = st_save(
            {k: np.ascontiguousarray(v) for k, v in sorted(bundle.params.items())},
            metadata={_SLOT_META: json.dumps(meta, sort_keys=True)},
        )
        write_atomic(self.slot_path(slot), blob)
        return Staged(slot, bundle.version, hashlib.sha256(blob).hexdigest(), bundle.key_id)

    def commit(self, staged: Staged, now: float | None = None) -> None:
        """Make the staged slot the active one: one atomic replace of ``state.json``."""
        if self.applied_version is not None and staged.version <= self.applied_version:
            raise BundleRejected(
                "stale_version", f"version {staged.version} is not newer than the applied {self.applied_version}"
            )
        at = time.time() if now is None else now
        record = {"version": staged.version, "sha256": staged.sha256, "key_id": staged.key_id, "committed_at": at}
        self._write_state(
            {
                **self.state,
                "slots": {**self.state["slots"], staged.slot: record},
                "active": staged.slot,
                "applied_version": staged.version,
                "last": {"outcome": "committed", "version": staged.version, "code": "ok", "reason": "", "at": at},
            }
        )

    def _persist(self) -> None:
        """Best effort write of the repaired state at start (the next commit writes it again)."""
        try:
            self._write_state()
        except OSError as exc:
            log.warning("edgetta sync: could not write %s (%s)", self.state_path, exc)

    def note(self, outcome: str, version: int | None, code: str, reason: str, now: float | None = None) -> None:
        """Record a refusal (``rejected`` by verification, ``rolled_back`` by the health check). Best effort:
        a full disk must not stop the device, so a failed write is logged and the outcome kept in memory."""
        at = time.time() if now is None else now
        last = {"outcome": outcome, "version": version, "code": code, "reason": reason, "at": at}
        try:
            self._write_state({**self.state, "last": last})
        except OSError as exc:
            log.warning("edgetta sync: could not record the %s outcome in %s (%s)", outcome, self.state_path, exc)
            self.state = {**self.state, "last": last}


# -- the apply ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyResult:
    """``outcome``: committed, rolled_back (the health check said no) or rejected (verification said no)."""

    outcome: str
    code: str
    reason: str
    version: int | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def committed(self) -> bool:
        return self.outcome == "committed"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _roll_back(
    store: SlotStore,
    bundle: VerifiedBundle,
    code: str,
    reason: str,
    stats: dict[str, float] | None = None,
    now: float | None = None,
) -> ApplyResult:
    store.note("rolled_back", bundle.version, code, reason, now=now)
    log.warning("edgetta sync: bundle version %s rolled back (%s): %s", bundle.version, code, reason)
    return ApplyResult("rolled_back", code, reason, bundle.version, stats or {})


def apply_verified(
    bundle: VerifiedBundle,
    *,
    store: SlotStore,
    adapter: Adapter,
    window: np.ndarray,
    policy: HealthPolicy = HealthPolicy(),
    now: float | None = None,
) -> ApplyResult:
    """Stage ``bundle`` into the inactive slot, check it on ``window``, then commit it and make its tensors the
    adapter's source parameters, or roll back and keep running on the current ones."""
    try:
        staged = store.stage(bundle)
    except OSError as exc:  # a full or read-only disk: nothing changed, try again later
        return _roll_back(store, bundle, "stage_failed", f"cannot write slot in {store.root} ({exc})", now=now)
    report = check_candidate(adapter, bundle.params, window, policy)
    if not report.ok:
        return _roll_back(store, bundle, report.code, report.reason, report.stats, now=now)
    try:
        store.commit(staged, now=now)
    except OSError as exc:  # state.json was not replaced: the previous slot is still the committed one
        return _roll_back(store, bundle, "commit_failed", f"cannot write {store.state_path} ({exc})", now=now)
    adapter.set_source_params(bundle.params, version=bundle.version)
    log.info("edgetta sync: bundle version %s applied from slot %s", bundle.version, staged.slot)
    return ApplyResult("committed", "ok", report.reason, bundle.version, report.stats)


def apply_bundle(
    data: bytes,
    *,
    store: SlotStore,
    adapter: Adapter,
    trusted_keys: Sequence[TrustedKey],
    window: np.ndarray,
    policy: HealthPolicy = HealthPolicy(),
    now: float | None = None,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> ApplyResult:
    """Verify ``data`` against the adapter's artifact, the trusted keys and the store's applied version, then
    :func:`apply_verified`. Never raises for a bad bundle: a refusal is logged, recorded and returned."""
    try:
        bundle = verify_bundle(
            data,
            artifact_dir=adapter.artifact,
            trusted_keys=trusted_keys,
            applied_version=store.applied_version,
            now=now,
            max_bytes=max_bytes,
        )
    except BundleRejected as exc:
        store.note("rejected", None, exc.code, exc.reason, now=now)
        log.warning("edgetta sync: bundle rejected (%s): %s", exc.code, exc.reason)
        return ApplyResult("rejected", exc.code, exc.reason)
    return apply_verified(bundle, store=store, adapter=adapter, window=window, policy=policy, now=now)


def resume(store: SlotStore, adapter: Adapter) -> int | None:
    """At start, after the adapter restored its checkpoint: the committed slot is the authority on the source
    parameters. When the adapter runs another version (a crash between a commit and the next checkpoint),
    the slot's tensors (or, with no bundle active, the artifact's own) become its source. Returns the version."""
    recovery = store.recovery
    if adapter.source_version != recovery.version:
        adapter.set_source_params(recovery.params or {}, version=recovery.version)
    return recovery.version
