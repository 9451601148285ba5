"""Rail registry and config parsing: ``build_rails(["nonfinite_guard", {"name": "entropy_gate", "e0_fraction": 0.4}])``.

The order rails run in is fixed by what they act on (``edgetta.safety.pipeline``), not by list order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from edgetta.errors import ConfigError
from edgetta.safety.base import Rail
from edgetta.safety.collapse import CollapseGuard
from edgetta.safety.ema_reset import EmaReset
from edgetta.safety.fisher_anchor import FisherAnchor
from edgetta.safety.gates import BatchEntropyGate, DiversityGate, EntropyGate
from edgetta.safety.label_shift import LabelShiftGuard
from edgetta.safety.nonfinite import NonfiniteGuard
from edgetta.safety.periodic import PeriodicReset
from edgetta.safety.restore import StochasticRestore
from edgetta.safety.signal_quality import SignalQuality
from edgetta.safety.trust_region import TrustRegion

__all__ = ["RAILS", "build_rail", "build_rails", "rail_arguments"]

RAILS: dict[str, type[Rail]] = {
    cls.name: cls
    for cls in (
        EntropyGate,
        BatchEntropyGate,
        DiversityGate,
        FisherAnchor,
        CollapseGuard,
        EmaReset,
        StochasticRestore,
        PeriodicReset,
        NonfiniteGuard,
        TrustRegion,
        LabelShiftGuard,
        SignalQuality,
    )
}


def rail_arguments(cls: type[Rail]) -> dict[str, Any]:
    """Constructor keyword arguments of a rail class and their defaults."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown rail {name!r}; valid rails: {', '.join(sorted(RAILS))}")


def build_rail(spec: str | Mapping[str, Any]) -> Rail:
    """One rail from a name or a mapping {"name": ..., **kwargs}."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"rail spec {dict(spec)!r} has no 'name'; valid rails: {', '.join(sorted(RAILS))}")
        name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"a rail spec must be a name or a mapping with 'name', got {spec!r}")
    if not isinstance(name, str) or name not in RAILS:
        raise _unknown(str(name))
    cls = RAILS[name]
    valid = rail_arguments(cls)
    bad = [k for k in kwargs if k not in valid]
    if bad:
        options = ", ".join(valid) if valid else "none"
        raise ConfigError(f"rail {name!r}: unknown argument(s) {', '.join(map(repr, bad))}; valid arguments: {options}")
    rail = cls(**kwargs)
    rail.spec = {"name": name, **valid, **kwargs}
    return rail


def build_rails(specs: Iterable[str | Mapping[str, Any]] | None) -> list[Rail]:
    """Rails in the given order; each name may appear once (checkpoint state is keyed by rail name)."""
    if isinstance(specs, (str, Mapping)):
        raise ConfigError(f"rails must be a list of rail names or mappings, got {specs!r}")
    rails: list[Rail] = []
    seen: set[str] = set()
    for spec in specs or []:
        rail = build_rail(spec)
        if rail.name in seen:
            raise ConfigError(f"rail {rail.name!r} is listed twice; give each rail once")
        seen.add(rail.name)
        rails.append(rail)
    return rails
