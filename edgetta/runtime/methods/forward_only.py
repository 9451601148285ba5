"""Forward-only methods: frozen source model, BN statistics refresh, LAME."""

from __future__ import annotations

import numpy as np

from edgetta.errors import ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.kernels import lame, softmax
from edgetta.runtime.methods.base import ForwardOnlyMethod, StepOutput


class Frozen(ForwardOnlyMethod):
    """The source model: source parameters, running statistics (bn_alpha = 0), no update."""

    name = "frozen"

    def forward_and_adapt(self, x: np.ndarray, batch_index: int, update: bool) -> StepOutput:
        logits, _ = self.forward(x)
        return StepOutput(logits, entropy_of(logits), forward_passes=1)


class BatchNormAdapt(ForwardOnlyMethod):
    """BN statistics refresh ("BN adapt", Schneider et al. NeurIPS 2020; Nado et al. 2020).

    ``alpha``: normalise with alpha*batch + (1-alpha)*running statistics (1 = "BN-1", pure test-batch
    statistics). ``momentum`` > 0: after each batch refresh the running statistics as an EMA of the batch
    statistics, mu <- (1-m) mu + m mu_batch (StableSleep: alpha = 0, m = 0.01), which also works at batch
    size 1 without a window because the batch's own statistics are not needed for its prediction.
    """

    name = "bn"

    def __init__(self, alpha: float = 1.0, momentum: float = 0.0, window: int = 0) -> None:
        super().__init__(window=window)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"bn.alpha must lie in [0, 1], got {alpha}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"bn.momentum must lie in [0, 1], got {momentum}")
        self.bn_alpha, self.momentum = float(alpha), float(momentum)

    def forward_and_adapt(self, x: np.ndarray, batch_index: int, update: bool) -> StepOutput:
        logits, outputs = self.forward(x)
        out = StepOutput(logits, entropy_of(logits), forward_passes=1)
        if update and self.momentum > 0 and self.state.running_stats:
            ctx = self.context(logits, batch_index, out.entropy)
            for rail in self.rails:
                rail.before_update(ctx)
            if not ctx.skip_update:
                self.state.refresh_running_stats(outputs, self.momentum)
                self.state.update_count += 1
                out.updated = True
            out.events.extend(ctx.events)
        return out


class Lame(ForwardOnlyMethod):
    """LAME (Boudiaf et al., CVPR 2022): Laplacian-regularised maximum-likelihood correction of the
    source model's output probabilities over the batch; the parameters never change."""

    name = "lame"

    def __init__(
        self,
        affinity: str = "knn",
        knn: int = 5,
        sigma: float | None = None,
        lam: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-8,
        window: int = 0,
    ) -> None:
        super().__init__(window=window)
        if affinity not in ("knn", "rbf", "linear"):
            raise ConfigError(f"lame.affinity must be one of knn, rbf, linear (got {affinity!r})")
        self.kwargs = {
            "affinity": affinity,
            "knn": int(knn),
            "sigma": sigma,
            "lam": float(lam),
            "max_iter": int(max_iter),
            "tol": float(tol),
        }

    def bind(self, engine, state, rails, env) -> None:
        super().bind(engine, state, rails, env)
        if not engine.artifact.manifest["outputs"].get("features"):
            raise ConfigError("method lame needs the artifact's features output; re-export with --classifier NAME")

    def forward_and_adapt(self, x: np.ndarray, batch_index: int, update: bool) -> StepOutput:
        _, outputs = self.forward(x)
        logits = outputs["logits"]
        probs = lame(softmax(logits), outputs["features"], **self.kwargs)
        corrected = np.log(np.clip(probs, 1e-12, None)).astype(np.float32)
        return StepOutput(corrected, entropy_of(logits), forward_passes=1)
