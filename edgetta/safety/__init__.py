"""Safety rails: small composable objects that gate, anchor, bound, restore and reset an adaptation step.

Each rail follows one published recipe (see its module docstring) and records every decision as an event.
Build them from a config with :func:`build_rails`; see ``RECOMMENDED_ORDER`` for the order to list them in.
"""

from edgetta.safety.base import RESET_SNAPSHOT, RESET_SOURCE, Event, Rail, RailEnv, StepContext
from edgetta.safety.collapse import CollapseGuard
from edgetta.safety.ema_reset import EmaReset
from edgetta.safety.fisher_anchor import FisherAnchor
from edgetta.safety.gates import BatchEntropyGate, DiversityGate, EntropyGate
from edgetta.safety.nonfinite import NonfiniteGuard
from edgetta.safety.periodic import PeriodicReset
from edgetta.safety.registry import (
    RAILS,
    RECOMMENDED_ORDER,
    apply_reset_hooks,
    build_rail,
    build_rails,
    rail_arguments,
)
from edgetta.safety.restore import StochasticRestore
from edgetta.safety.trust_region import TrustRegion

__all__ = [
    "RAILS",
    "RECOMMENDED_ORDER",
    "RESET_SNAPSHOT",
    "RESET_SOURCE",
    "BatchEntropyGate",
    "DiversityGate",
    "CollapseGuard",
    "EmaReset",
    "EntropyGate",
    "Event",
    "FisherAnchor",
    "NonfiniteGuard",
    "PeriodicReset",
    "Rail",
    "RailEnv",
    "StepContext",
    "StochasticRestore",
    "TrustRegion",
    "apply_reset_hooks",
    "build_rail",
    "build_rails",
    "rail_arguments",
]
