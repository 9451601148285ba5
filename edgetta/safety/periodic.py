"""RDumb periodic reset (Press et al., NeurIPS 2023): reset to the source every ``every`` updates.

Counting: ``ctx.update_count`` is the number of updates committed before this step (the runtime
increments it after each committed update), so the step proposing update number k = update_count + 1
checks k % every == 0 in ``after_update``. The reset is requested only when that step's update is not
skipped or rejected by an earlier rail, so with every = N it fires after updates N, 2N, 3N, ... and the
reset replaces the state the N-th update would have produced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetta.safety._common import check_int, update_applies
from edgetta.safety.base import RESET_SOURCE, Rail, StepContext, Target

__all__ = ["PeriodicReset"]


class PeriodicReset(Rail):
    """Request a reset to source after every ``every``-th applied update (default 1000, RDumb)."""

    name = "periodic_reset"
    acts_on = frozenset({Target.RESET})

    def __init__(self, every: int = 1000) -> None:
        self.every = check_int(self.name, "every", every, minimum=1)
        self.last_reset_update: int | None = None

    def after_update(self, ctx: StepContext) -> None:
        if not update_applies(ctx):
            return
        update = ctx.update_count + 1
        if update % self.every == 0:
            self.last_reset_update = update
            ctx.request_reset(
                self.name,
                RESET_SOURCE,
                f"periodic reset after update {update} (every {self.every})",
                update=update,
                every=self.every,
            )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"last_reset_update": self.last_reset_update}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        last = meta.get("last_reset_update")
        self.last_reset_update = None if last is None else int(last)
