"""Folded inference: the parameters of an infer graph as constants while they do not change.

The exported graphs take the norm parameters and statistics as graph inputs, so one session serves every
parameter state -- but ONNX Runtime can then fold nothing: BatchNormalization stays a separate pass over
every convolution output. When the same values arrive call after call at ``bn_alpha`` 0 (``frozen`` always;
any running-statistics method while its updates are gated off or between bundles; batch-statistics variants
never fold, since BN cannot fold into a convolution there), ``FoldCache`` builds a second session of the same graph with
those values as initializers; ORT's optimiser then folds each BatchNormalization into its convolution, as in
a plain inference export. Every call compares the values with the folded ones (one copy of the few norm
parameters, compared in one pass), so a parameter changed in place, a new array or a bundle swap is never
served by a stale fold: the call runs the general session, and the fold is rebuilt once the new values
have been seen ``threshold`` calls in a row. A fold that had to be dropped before it paid for itself (fewer
calls served than it took to become due) doubles the threshold, so a method that changes its parameters
every few calls stops paying for folds it cannot use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from edgetta.engines.ort.binding import GraphVariant

log = logging.getLogger("edgetta.engine")

FOLD_AFTER = 2  # calls in a row with the same values before a fold is built
MAX_THRESHOLD = 1024


def flatten(names: list[str], params: Mapping[str, np.ndarray]) -> np.ndarray:
    """The values of ``names`` as one float32 vector (a copy: later in-place changes do not reach it)."""
    if not names:
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(params[n], dtype=np.float32).ravel() for n in names])


def folded_model(source: str | bytes, values: Mapping[str, np.ndarray]) -> bytes:
    """The graph ``source`` (a path or serialized ModelProto) with the inputs named in ``values`` turned
    into initializers holding those values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(source) if isinstance(source, str) else onnx.load_from_string(source)
    graph = model.graph
    kept = [i for i in graph.input if i.name not in values]
    folded = [i.name for i in graph.input if i.name in values]
    del graph.input[:]
    graph.input.extend(kept)
    existing = {t.name for t in graph.initializer}
    for name in folded:
        if name not in existing:
            array = np.ascontiguousarray(values[name], dtype=np.float32)
            graph.initializer.append(numpy_helper.from_array(array, name))
    return model.SerializeToString()


@dataclass
class _Fold:
    """Fold bookkeeping of one graph variant."""

    values: np.ndarray | None = None  # the parameter values seen last (flat copy)
    streak: int = 0  # calls in a row that passed exactly ``values``
    threshold: int = FOLD_AFTER
    variant: GraphVariant | None = None  # the folded session for ``values``
    served: int = 0  # calls the folded session answered
    build_seconds: float = 0.0
    failed: str | None = None  # why folding is impossible for this variant (never retried)
    builds: int = field(default=0)


class FoldCache:
    """Folded sessions for the infer variants of one engine.

    ``source(variant)`` gives the graph a variant runs (path or bytes); ``session(data)`` builds an ORT
    session from serialized bytes; ``data_inputs`` are the non-parameter inputs."""

    def __init__(
        self,
        source: Callable[[GraphVariant], str | bytes | None],
        session: Callable[[bytes], ort.InferenceSession],
        data_inputs: frozenset[str],
    ) -> None:
        self._source, self._session, self._data_inputs = source, session, data_inputs
        self._folds: dict[int, _Fold] = {}

    def state(self, variant: GraphVariant) -> _Fold:
        """The bookkeeping of ``variant`` (for tests and reports)."""
        return self._folds.setdefault(id(variant), _Fold())

    def run(
        self,
        variant: GraphVariant,
        names: list[str],
        params: Mapping[str, np.ndarray],
        feed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """One call of ``variant``: through its fold when one holds exactly ``params``' values, else through
        the general session (building the fold once the values have repeated ``threshold`` times)."""
        fold = self.state(variant)
        if fold.failed is not None or not variant.params or variant.bn_alpha != 0.0:
            # only running-statistics variants fold: that is where BN folds into the convolution (the plain
            # inference export); with batch statistics nothing folds, and ORT's optimiser was seen to compute
            # wrong logits for a folded logits-only variant at bn_alpha = 1 (tests/test_fold.py)
            return variant.run(names, params, feed)
        values = flatten(variant.params, params)
        if fold.values is not None and np.array_equal(values, fold.values):
            fold.streak += 1
        else:
            self._drop(fold)
            fold.values, fold.streak = values, 1
        if fold.variant is None and fold.streak >= fold.threshold:
            self._build(variant, fold, params)
        if fold.variant is not None:
            fold.served += 1
            return fold.variant.run(names, {}, feed)
        return variant.run(names, params, feed)

    def _drop(self, fold: _Fold) -> None:
        if fold.variant is None:
            return
        if fold.served < fold.threshold:  # it did not pay for itself: wait longer before the next one
            fold.threshold = min(fold.threshold * 2, MAX_THRESHOLD)
        fold.variant, fold.served = None, 0

    def _build(self, variant: GraphVariant, fold: _Fold, params: Mapping[str, np.ndarray]) -> None:
        started = time.perf_counter()
        try:
            source = self._source(variant)
            if source is None:
                raise ValueError("the graph's source is not available")
            values = {n: np.asarray(params[n], dtype=np.float32) for n in variant.params}
            session = self._session(folded_model(source, values))
            fold.variant = GraphVariant.of(variant.which, session, self._data_inputs, variant.bn_alpha, variant.report)
        except Exception as exc:  # noqa: BLE001 - folding is an optimisation: the general session still runs
            fold.failed = f"{type(exc).__name__}: {exc}"
            log.info("edgetta engine: %s graph not folded (%s); running it with parameter inputs", variant.which, exc)
            return
        fold.served = 0
        fold.builds += 1
        fold.build_seconds = time.perf_counter() - started
