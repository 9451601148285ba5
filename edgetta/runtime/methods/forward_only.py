"""Forward-only methods: frozen source model, BN statistics refresh, LAME."""

from __future__ import annotations

import numpy as np

from edgetta.contract import LOGITS
from edgetta.errors import ConfigError
from edgetta.kernels import entropy as entropy_of
from edgetta.kernels import lame, softmax
from edgetta.runtime.methods.base import ForwardOnlyMethod, StepOutput
from edgetta.safety.base import StepContext, Target


class Frozen(ForwardOnlyMethod):
    """The source model: source parameters, running statistics (bn_alpha = 0), no update."""

    name = "frozen"

    def own_infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Only the logits: the pruned graph computes no batch statistics, and the engine runs it folded
        (the parameters never change)."""
        return self.engine.infer(x, self.state.params, self.bn_alpha, outputs=[LOGITS])


class BatchNormAdapt(ForwardOnlyMethod):
    """BN statistics refresh ("BN adapt", Schneider et al. NeurIPS 2020; Nado et al. 2020).

    ``bn_alpha``: normalise with bn_alpha*batch + (1-bn_alpha)*running statistics (1 = "BN-1", pure test-batch
    statistics). ``bn_momentum`` > 0: after each batch propose new running statistics as an EMA of the batch
    statistics, mu <- (1-m) mu + m mu_batch (StableSleep: bn_alpha = 0, m = 0.01); the proposal passes the
    rails (batch gates, proposal edits, resets) like a gradient step's. With bn_alpha = 0 a prediction does
    not depend on its batch, so batch size 1 needs no window. With bn_alpha > 0 it offers the statistics
    choice (``label_shift_guard``: label-correlated batches are normalised with robust statistics).
    """

    name = "bn"

    def __init__(self, bn_alpha: float = 1.0, bn_momentum: float = 0.0) -> None:
        if not 0.0 <= bn_alpha <= 1.0:
            raise ConfigError(f"method_args.bn_alpha must lie in [0, 1], got {bn_alpha}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ConfigError(f"method_args.bn_momentum must lie in [0, 1], got {bn_momentum}")
        self.bn_alpha, self.bn_momentum = float(bn_alpha), float(bn_momentum)

    def offers(self) -> frozenset[Target]:
        offered = {Target.STATISTICS} if self.bn_alpha > 0 else set()
        if self.bn_momentum > 0:
            offered |= {Target.BATCH, Target.PROPOSAL, Target.RESET}
        return frozenset(offered)

    def adapted_names(self) -> list[str]:
        return [name for stats in self.state.running_stats for name in stats[:2]]

    def propose(self, ctx: StepContext, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        m = self.bn_momentum
        if m == 0:
            return None
        proposed = {}
        for running_mean, running_var, batch_mean, batch_var in self.state.running_stats:
            proposed[running_mean] = ((1 - m) * ctx.params[running_mean] + m * outputs[batch_mean]).astype(np.float32)
            proposed[running_var] = ((1 - m) * ctx.params[running_var] + m * outputs[batch_var]).astype(np.float32)
        return proposed


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
    ) -> None:
        if affinity not in ("knn", "rbf", "linear"):
            raise ConfigError(f"method_args.affinity must be one of knn, rbf, linear (got {affinity!r})")
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
        if engine.artifact.output_name("features") is None:
            raise ConfigError("method lame needs the artifact's features output; re-export with --classifier NAME")

    def needs_batch(self, artifact) -> bool:
        return True  # the correction couples the samples of a batch

    def forward(self, x: np.ndarray, update: bool) -> tuple[StepOutput, dict[str, np.ndarray]]:
        out, outputs = self.infer(x)
        probs = lame(softmax(out.logits), outputs["features"], **self.kwargs)
        corrected = np.log(np.clip(probs, 1e-12, None)).astype(np.float32)
        return StepOutput(corrected, entropy_of(out.logits), forward_passes=1), outputs
