"""The one rail pipeline every method runs: rails ordered by what they declare they act on.

Order (fixed by the rail classes, never by config order): guard rails first, then by the first
:class:`~edgetta.safety.base.Target` a rail acts on (statistics choice, batch gates, sample-weight gates,
gradient edits, proposal edits, resets), then by name. Each phase calls every rail's hook in that order.

A method offers the targets it has (a gradient method all of them, the statistics choice only when it
normalises with test-batch statistics, bn_alpha > 0; BN statistics refresh: the statistics choice when
bn_alpha > 0, and with a momentum batch gates, proposals of new statistics and resets; frozen and LAME
none). A rail that acts
on nothing the method offers is refused with a message, never accepted and silently idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from edgetta.errors import CheckpointError, ConfigError
from edgetta.safety.base import Rail, ScreenContext, StatisticsContext, StepContext, Target

__all__ = ["RailPipeline", "rail_order_key"]

RAIL_PREFIX = "rails/"


def rail_order_key(rail: Rail) -> tuple[int, int, str]:
    """Guards first, then the first target in pipeline order, then the name."""
    first = min(rail.acts_on) if rail.acts_on else Target.RESET
    return (0 if rail.guard else 1, int(first), rail.name)


def _targets(targets: Iterable[Target]) -> str:
    return ", ".join(t.name.lower() for t in sorted(targets)) or "nothing"


class RailPipeline:
    """Rails in their fixed order, checked against what the method offers."""

    def __init__(self, rails: Sequence[Rail], offered: frozenset[Target], method: str) -> None:
        for rail in rails:
            if not rail.acts_on & offered:
                if not offered:
                    why = f"method {method} never changes the model, so no rail can act"
                else:
                    why = f"method {method} offers {_targets(offered)}"
                raise ConfigError(
                    f"rails: {rail.name} acts on {_targets(rail.acts_on)}, but {why}; remove {rail.name} from rails"
                )
        self.rails: list[Rail] = sorted(rails, key=rail_order_key)
        self.offered = offered

    @property
    def names(self) -> list[str]:
        return [rail.name for rail in self.rails]

    @property
    def gates_before_update(self) -> bool:
        """True when a rail decides on the batch or the sample weights from the forward pass's entropies."""
        return any(rail.acts_on & {Target.BATCH, Target.SAMPLE_WEIGHTS} for rail in self.rails)

    @property
    def chooses_statistics(self) -> bool:
        """True when a rail may choose the BN statistics of a batch before its forward pass."""
        return any(Target.STATISTICS in rail.acts_on for rail in self.rails)

    def remove(self, rail: Rail) -> None:
        self.rails.remove(rail)

    @property
    def screens(self) -> bool:
        """True when a rail may exclude caller-flagged rows (it overrides ``screen``)."""
        return any(type(rail).screen is not Rail.screen for rail in self.rails)

    # -- phases ----------------------------------------------------------------------------------
    def screen(self, ctx: ScreenContext) -> None:
        for rail in self.rails:
            rail.screen(ctx)

    def choose_statistics(self, ctx: StatisticsContext) -> None:
        for rail in self.rails:
            if ctx.replaced is not None:
                return
            rail.choose_statistics(ctx)

    def before_update(self, ctx: StepContext) -> None:
        for rail in self.rails:
            rail.before_update(ctx)

    def on_gradients(self, ctx: StepContext) -> None:
        for rail in self.rails:
            if ctx.skip_update:
                return
            rail.on_gradients(ctx)

    def after_update(self, ctx: StepContext) -> None:
        for rail in self.rails:
            rail.after_update(ctx)

    def after_commit(self, ctx: StepContext) -> None:
        for rail in self.rails:
            rail.after_commit(ctx)

    def on_reset(self, target: str) -> None:
        for rail in self.rails:
            rail.on_reset(target)

    # -- checkpoint state, keyed by rail name and checked against its configuration -----------------
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {}
        for rail in self.rails:
            rail_tensors, rail_meta = rail.state()
            tensors.update({f"{RAIL_PREFIX}{rail.name}/{k}": v for k, v in rail_tensors.items()})
            meta[rail.name] = {"config": rail.spec, "state": rail_meta}
        return tensors, meta

    def check_state(self, meta: dict[str, Any]) -> None:
        """Raise CheckpointError naming every difference between saved and configured rails."""
        saved, current = set(meta), set(self.names)
        problems = []
        if saved - current:
            problems.append(f"rails {', '.join(sorted(saved - current))} are in the checkpoint but not configured")
        if current - saved:
            problems.append(f"rails {', '.join(sorted(current - saved))} are configured but not in the checkpoint")
        for rail in self.rails:
            entry = meta.get(rail.name)
            if isinstance(entry, dict) and entry.get("config") != rail.spec:
                problems.append(f"rail {rail.name} was saved with {entry.get('config')}, configured as {rail.spec}")
        if problems:
            raise CheckpointError("rail state does not match this configuration: " + "; ".join(problems))

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.check_state(meta)
        for rail in self.rails:
            prefix = f"{RAIL_PREFIX}{rail.name}/"
            rail.load_state(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, meta[rail.name]["state"]
            )
