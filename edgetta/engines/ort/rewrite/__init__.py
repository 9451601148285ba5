"""Graph-level rewrites that make an artifact's ONNX graphs fast on ONNX Runtime's CPU provider.

The exporter traces BatchNorm as plain reductions and elementwise ops (portable: TensorRT rejects
training-mode BatchNormalization) and its backward as the decomposition of those ops: about twenty
full-size elementwise passes per BN layer, plus ``Where`` nodes for ReLU gradients, which ORT's CPU
kernel runs ~100x slower than a ``Mul``. ``optimize_graph`` rewrites, per trainable BN layer:

- forward: ``BatchNormalization`` in training mode (one fused pass yields the output, the batch mean and
  the biased batch variance) when ``bn_alpha`` is 1, else an inference-mode ``BatchNormalization`` fed
  with the blended statistics ``m = a mu_B + (1-a) mu_run``, ``v = a var_B + (1-a) var_run``;
- backward (Ioffe & Szegedy 2015, Sec. 3, extended to the blend), with ``r = (v + eps)^-1/2``,
  ``S1 = sum dy`` and ``S2 = sum dy x - m S1`` (= ``sum dy (x - m)``) over all axes but the channel:
  ``dbeta = S1``, ``dgamma = r S2``,
  ``dx = r g dy - (a/M) r g S1 - (a/M) r^3 g S2 (x - mu_B)``: two reductions and three full passes, and
  nothing but x itself kept from the forward;

and, graph-wide: ReLU gradients ``Where(y <= 0, 0, g)`` become ``g * float(y > 0)`` with a one-byte mask
taken right after the ReLU; the 1-D max-pool backward (``MaxPool`` with ``Indices`` + ``ScatterElements``)
becomes ``ArgMax`` + ``MaxUnpool`` and plain ``MaxPool``; ``bn_alpha`` can be fixed (ORT then folds the
blend away) and graph outputs pruned with everything only they need. New nodes are placed so that, with
ORT's priority-based order, only x and the masks live from the forward to the backward.

Every pattern is checked and a layer that differs from what is expected is left as exported; the
engine additionally compares each rewritten graph with the export before using it (edgetta.engines.ort.verify).
numpy and onnx only; ``optimize_graph`` is the entry point.
"""

from edgetta.engines.ort.rewrite.optimize import MIN_OPSET, RewriteReport, optimize_graph, specialize_input

__all__ = ["MIN_OPSET", "RewriteReport", "optimize_graph", "specialize_input"]
