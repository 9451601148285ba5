"""``GraphVariant``: one ORT session of a graph, and the IOBinding path every call goes through.

Parameter arrays are bound without a copy (ORT reads their memory at run time, so arrays changed in place
are seen) and rebound only when a call passes a different array object; arrays that need a dtype/layout
conversion are converted and rebound on every call. Outputs stay bound (ORT allocates them on the first run
and refills them later; results are copied out) until a call asks for other outputs or another batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass
class GraphVariant:
    """One session: a graph (``which``) for one ``bn_alpha`` (None: an input) and one set of outputs.
    ``report``: what the rewrite did (edgetta.engines.ort.rewrite.RewriteReport as a dict), None when the
    exported graph runs as it is. ``source``: gives the graph the session was built from (a path or serialized
    bytes; edgetta.engines.ort.fold builds folded sessions from it), None when unknown."""

    which: str
    session: ort.InferenceSession
    inputs: list[str]
    params: list[str]
    outputs: list[str]
    bn_alpha: float | None
    report: dict[str, Any] | None = None
    source: Callable[[], str | bytes | None] | None = field(default=None, repr=False)
    _binding: Any = field(default=None, repr=False)
    _bound: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        which: str,
        session: ort.InferenceSession,
        data_inputs: frozenset[str],
        bn_alpha: float | None,
        report: dict[str, Any] | None,
        source: Callable[[], str | bytes | None] | None = None,
    ) -> GraphVariant:
        """Read the session's inputs and outputs; inputs that are not data inputs are parameters."""
        inputs = [i.name for i in session.get_inputs()]
        return cls(
            which=which,
            session=session,
            inputs=inputs,
            params=[n for n in inputs if n not in data_inputs],
            outputs=[o.name for o in session.get_outputs()],
            bn_alpha=bn_alpha,
            report=report,
            source=source,
        )

    def run(
        self, names: list[str], params: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One call through the session's IOBinding: ``params`` by graph-input name, ``feed`` the data inputs
        (those the session does not take are skipped); returns copies of the outputs ``names``."""
        if self._binding is None:
            self._binding = self.session.io_binding()
        binding, bound = self._binding, self._bound
        for name in self.params:
            value = params[name]
            if bound.get(name) is value:
                continue
            converted = _f32(value)
            binding.bind_cpu_input(name, converted)
            if converted is value:
                bound[name] = value
            else:
                bound.pop(name, None)
                bound[f"#{name}"] = converted  # keep the converted copy alive while it is bound
        for name, value in feed.items():
            if name in self.inputs:
                binding.bind_cpu_input(name, value)
                bound[f"#{name}"] = value
        key = (tuple(names), tuple(np.shape(value) for value in feed.values()))
        if bound.get("#outputs") != key:
            binding.clear_binding_outputs()
            for name in names:
                binding.bind_output(name)
            bound["#outputs"] = key
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))


def _f32(array: np.ndarray) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=np.float32)
