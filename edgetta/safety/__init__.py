"""Safety rails: small composable objects that gate, anchor, bound, restore and reset an adaptation step.

Each rail follows one published recipe (see its module docstring) and records every decision as an event.
Build them from a config with :func:`build_rails`; :class:`RailPipeline` runs them in the order their
declarations fix (guards first, then by what they act on).
"""

from edgetta.safety.base import (
    RESET_SNAPSHOT,
    RESET_SOURCE,
    Event,
    Rail,
    RailEnv,
    RailUnavailable,
    StatisticsContext,
    StepContext,
    Target,
)
from edgetta.safety.collapse import CollapseGuard
from edgetta.safety.ema_reset import EmaReset
from edgetta.safety.fisher_anchor import FisherAnchor
from edgetta.safety.gates import BatchEntropyGate, DiversityGate, EntropyGate
from edgetta.safety.label_shift import LabelShiftGuard
from edgetta.safety.nonfinite import NonfiniteGuard
from edgetta.safety.periodic import PeriodicReset
from edgetta.safety.pipeline import RailPipeline, rail_order_key
from edgetta.safety.registry import RAILS, build_rail, build_rails, rail_arguments
from edgetta.safety.restore import StochasticRestore
from edgetta.safety.trust_region import TrustRegion

__all__ = [
    "RAILS",
    "RESET_SNAPSHOT",
    "RESET_SOURCE",
    "BatchEntropyGate",
    "DiversityGate",
    "CollapseGuard",
    "EmaReset",
    "EntropyGate",
    "Event",
    "FisherAnchor",
    "LabelShiftGuard",
    "NonfiniteGuard",
    "PeriodicReset",
    "Rail",
    "RailPipeline",
    "RailUnavailable",
    "RailEnv",
    "StatisticsContext",
    "StepContext",
    "StochasticRestore",
    "Target",
    "TrustRegion",
    "build_rail",
    "build_rails",
    "rail_arguments",
    "rail_order_key",
]
