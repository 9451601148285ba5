"""Signal-quality rail: epochs the caller flagged as bad signal are staged but never adapt the model.

A bedside EEG loses its electrode at 3 a.m., saturates, goes flat or picks up mains noise; the sleep
pipeline flags such epochs per row (``edgetta.sleep.quality.epoch_quality``) and passes the flags to
``Adapter.process(x, flags=...)``. In the screening phase this rail excludes every flagged row (or only
those whose reason contains one of ``reasons``): the Adapter still predicts it with the current state, but
it never enters a gradient update, a BN statistics refresh, the sliding window whose statistics later
epochs are normalised with, or any rail's running estimate (entropy EMAs, snapshots), since the method and
the other rails never see it. One event per call that excluded rows, naming the rows and reasons.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgetta.errors import ConfigError
from edgetta.safety.base import Rail, ScreenContext, Target

__all__ = ["SignalQuality"]


class SignalQuality(Rail):
    """Exclude caller-flagged rows from adaptation and statistics."""

    name = "signal_quality"
    acts_on = frozenset({Target.STATISTICS, Target.BATCH})
    guard = True

    def __init__(self, reasons: Sequence[str] | None = None) -> None:
        if reasons is not None and (
            isinstance(reasons, (str, bytes)) or not all(isinstance(r, str) and r for r in reasons)
        ):
            raise ConfigError(f"{self.name}.reasons must be a list of words (e.g. [flat, clipping]), got {reasons!r}")
        self.reasons = None if reasons is None else tuple(r.lower() for r in reasons)

    def _excludes(self, reason: str | None) -> bool:
        if reason is None:
            return False
        return self.reasons is None or any(word in reason.lower() for word in self.reasons)

    def screen(self, ctx: ScreenContext) -> None:
        rows = [i for i, reason in enumerate(ctx.flags) if self._excludes(reason)]
        if not rows:
            return
        ctx.exclude[rows] = True
        reasons = [ctx.flags[i] for i in rows]
        ctx.emit(
            self.name,
            "exclude",
            f"{len(rows)} of {len(ctx.flags)} row(s) flagged ({'; '.join(sorted(set(map(str, reasons))))}): "
            "predicted, kept out of adaptation and statistics",
            rows=rows,
            reasons=reasons,
        )
