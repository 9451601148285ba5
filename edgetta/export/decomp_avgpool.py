"""Average-pooling backward as forward ops, for the joint forward+backward trace.

torch 2.13 lists ``aten.avg_pool2d_backward`` among its core decompositions but registers none, so a model
whose gradient path crosses ``nn.AvgPool1d``/``nn.AvgPool2d`` or ``F.avg_pool1d`` (1-D pooling runs as 2-D
on an unsqueezed input) -- SleePyCo's channel gates, for one -- fails at ONNX conversion with "No ONNX
function found for aten.avg_pool2d_backward".

Average pooling is a depthwise convolution with a constant kernel 1/d (d the divisor), so its input
gradient is the transposed convolution of the output gradient with that kernel: ``ConvTranspose`` with
groups = channels and the pooling's stride, cropped by the padding and zero-padded where no window
reaches. Exact when every window has the same divisor: ``divisor_override``, or ``count_include_pad``
(or no padding) without a ``ceil_mode`` window past the padded edge; other cases raise, so the export
stops with a clear message instead of a wrong gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def _pair(values: Sequence[int], default: Sequence[int]) -> tuple[int, int]:
    """(h, w) from torch's one- or two-element size lists (empty: ``default``, as torch's empty stride)."""
    values = [int(v) for v in values] or [int(v) for v in default]
    return values[0], values[-1]


def avg_pool2d_backward(
    grad_output: torch.Tensor,
    inp: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """d(loss)/d(input) of ``avg_pool2d`` given d(loss)/d(output); inputs [N, C, H, W] or [C, H, W]."""
    kh, kw = _pair(kernel_size, ())
    sh, sw = _pair(stride, (kh, kw))
    ph, pw = _pair(padding, (0, 0))
    height, width = int(inp.shape[-2]), int(inp.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    # extent of the windows in padded coordinates (the padded input starts at -padding)
    span_h, span_w = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    truncated = span_h > height + 2 * ph or span_w > width + 2 * pw  # ceil_mode's last window hangs over
    if divisor_override:
        divisor = float(divisor_override)
    elif (count_include_pad or (ph == 0 and pw == 0)) and not truncated:
        divisor = float(kh * kw)
    else:
        raise NotImplementedError(
            "average pooling backward with windows of different sizes (count_include_pad=False with padding, or "
            "ceil_mode windows past the edge) is not supported"
        )
    squeeze = grad_output.dim() == 3
    grad = grad_output.unsqueeze(0) if squeeze else grad_output
    channels = int(grad.shape[1])
    weight = torch.full((channels, 1, kh, kw), 1.0 / divisor, dtype=grad.dtype, device=grad.device)
    out = F.conv_transpose2d(grad, weight, None, (sh, sw), 0, 0, channels)  # span_h x span_w, padded coordinates
    tail_h, tail_w = height + ph - span_h, width + pw - span_w
    if tail_h > 0 or tail_w > 0:  # trailing rows/columns no window reaches: zero gradient
        out = F.pad(out, (0, max(tail_w, 0), 0, max(tail_h, 0)))
    out = out[..., ph : ph + height, pw : pw + width]
    return out.squeeze(0) if squeeze else out


def decompositions() -> dict[Callable, Callable]:
    """Entries for the exporter's decomposition table (edgetta.export.decompositions.decomposition_table)."""
    return {aten.avg_pool2d_backward.default: avg_pool2d_backward}
