"""Decompositions that turn the backward ops of a traced joint graph into standard forward ops.

The ONNX exporter has no translation for several aten backward ops. Only gradients with respect
to activations (and through them to the norm parameters) are needed, never weight gradients, so:

- ``convolution_backward`` -> the input gradient only. Stride-1 convolutions become a plain
  convolution with spatially flipped, channel-transposed weights (which ORT constant-folds, and
  which is faster than ConvTranspose); strided ones a transposed convolution.
- ``_adaptive_avg_pool{1,2}d_backward`` -> broadcast / repeat of the output gradient, or for uneven
  windows a multiply-and-sum with the per-axis averaging matrix.
- ``adaptive_max_pool2d`` (1-D runs through it too) -> per-window max and first-argmax; its backward a
  one-hot mask multiply.
- ``avg_pool2d_backward`` -> a depthwise transposed convolution (decomp_avgpool.py); PReLU's backward
  -> torch's decomposition into forward ops (decomp_prelu.py).
- every other backward op with a registered torch decomposition (ReLU, GELU, hardswish,
  max-pool, softmax, ...) uses torch's own decomposition into forward ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch._decomp as torch_decomp

from edgetta.export import decomp_avgpool, decomp_prelu

aten = torch.ops.aten

_TORCH_DECOMPOSED = [
    aten.threshold_backward,
    aten.gelu_backward,
    aten.hardswish_backward,
    aten.hardsigmoid_backward,
    aten.hardtanh_backward,
    aten.sigmoid_backward,
    aten.tanh_backward,
    aten.silu_backward,
    aten.leaky_relu_backward,
    aten.elu_backward,
    aten.softplus_backward,
    aten.mish_backward,
    aten._softmax_backward_data,
    aten._log_softmax_backward_data,
    aten.max_pool2d_with_indices_backward,
    aten.avg_pool2d_backward,
    aten.native_dropout_backward,
    aten.embedding_dense_backward,
    aten.index_select_backward,
    aten.diagonal_backward,
    aten.unfold_backward,
    aten.masked_fill,
]


def _input_grad_of_convolution(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    spatial = weight.dim() - 2
    kernel = weight.shape[2:]
    if all(s == 1 for s in stride) and all(p <= d * (k - 1) for p, d, k in zip(padding, dilation, kernel)):
        # Correlation with the flipped kernel, in/out channels swapped within each group.
        out_ch, in_per_group = weight.shape[0], weight.shape[1]
        flipped = torch.flip(weight, dims=list(range(2, 2 + spatial)))
        flipped = flipped.reshape((groups, out_ch // groups, in_per_group) + tuple(kernel))
        flipped = flipped.transpose(1, 2).reshape((groups * in_per_group, out_ch // groups) + tuple(kernel))
        pads = [d * (k - 1) - p for p, d, k in zip(padding, dilation, kernel)]
        return aten.convolution(
            grad_out, flipped, None, [1] * spatial, pads, list(dilation), False, [0] * spatial, groups
        )
    output_padding = [
        inp.shape[2 + i]
        - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(spatial)
    ]
    return aten.convolution(
        grad_out, weight, None, list(stride), list(padding), list(dilation), True, output_padding, groups
    )


def convolution_backward(
    grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):
    if transposed:
        raise NotImplementedError(
            "gradients through transposed convolutions are not supported; freeze the norm layers before it"
        )
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError(
            "a convolution weight/bias requires a gradient: only norm-layer affine parameters may be trainable"
        )
    grad_input = None
    if output_mask[0]:
        grad_input = _input_grad_of_convolution(grad_out, inp, weight, stride, padding, dilation, groups)
    return grad_input, None, None


def adaptive_avg_pool2d_backward(grad_out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    return _adaptive_avg_pool_backward(grad_out, inp, 2)


def adaptive_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """The [start, end) input window of each output of adaptive pooling from ``n_in`` to ``n_out``: start
    floor(i * n_in / n_out), end ceil((i + 1) * n_in / n_out) (PyTorch's definition; windows may overlap)."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _averaging_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i holds 1/len(window i) on window i (adaptive average pooling along one axis).
    Built from arange arithmetic (constant-folded by ONNX Runtime), as a traced graph holds no tensor literals."""
    outs = torch.arange(n_out, device=like.device)
    starts = torch.div(outs * n_in, n_out, rounding_mode="floor")
    ends = torch.div((outs + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    cols = torch.arange(n_in, device=like.device).unsqueeze(0)
    inside = (cols >= starts.unsqueeze(1)) & (cols < ends.unsqueeze(1))
    return inside.to(like.dtype) / (ends - starts).unsqueeze(1).to(like.dtype)


def _adaptive_avg_pool_backward(grad_out: torch.Tensor, inp: torch.Tensor, spatial: int) -> torch.Tensor:
    """Adaptive average pooling is linear and separable, one averaging matrix A per axis, so the input
    gradient is A^T applied to the output gradient along every pooled axis. Evenly dividing axes (global
    pooling included) take a broadcast / repeat; uneven ones a multiply-and-sum with A (portable ops: Mul,
    ReduceSum; no scatter)."""
    in_sizes = inp.shape[-spatial:]
    out_sizes = grad_out.shape[-spatial:]
    grad = grad_out
    for i, (n_in, n_out) in enumerate(zip(in_sizes, out_sizes)):
        axis = grad.dim() - spatial + i
        if n_in % n_out == 0:
            grad = (
                torch.repeat_interleave(grad, n_in // n_out, dim=axis)
                if n_out > 1
                else grad.expand(tuple(grad.shape[:axis]) + (n_in,) + tuple(grad.shape[axis + 1 :]))
            ) / (n_in // n_out)
            continue
        # (..., n_out, 1, rest) * (n_out, n_in, 1...) summed over n_out -> (..., n_in, rest)
        trailing = grad.dim() - axis - 1
        matrix = _averaging_matrix(n_in, n_out, grad).reshape((n_out, n_in) + (1,) * trailing)
        grad = (grad.unsqueeze(axis + 1) * matrix).sum(dim=axis)
    return grad


def adaptive_max_pool2d(inp: torch.Tensor, output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive max pooling over static windows: the max of each window (slice + amax) and the flat index
    (h * W + w) of its first maximum, as aten.adaptive_max_pool2d returns them."""
    height, width = int(inp.shape[-2]), int(inp.shape[-1])
    rows, cols = adaptive_windows(height, output_size[0]), adaptive_windows(width, output_size[1])
    values, indices = [], []
    for h0, h1 in rows:
        for w0, w1 in cols:
            window = inp[..., h0:h1, w0:w1].flatten(-2)
            best, local = window.max(dim=-1)
            values.append(best)
            span = w1 - w0
            indices.append((h0 + torch.div(local, span, rounding_mode="floor")) * width + w0 + local % span)
    shape = tuple(inp.shape[:-2]) + tuple(output_size)
    return torch.stack(values, dim=-1).reshape(shape), torch.stack(indices, dim=-1).reshape(shape)


def adaptive_max_pool2d_backward(grad_out: torch.Tensor, inp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Each output gradient goes to the input position its index names: a one-hot mask (index == position)
    multiplied by the gradient and summed over the outputs (Equal, Mul, ReduceSum; no scatter)."""
    height, width = int(inp.shape[-2]), int(inp.shape[-1])
    lead = tuple(grad_out.shape[:-2])
    flat_grad = grad_out.reshape(lead + (-1, 1))
    flat_index = indices.reshape(lead + (-1, 1))
    positions = torch.arange(height * width, device=inp.device, dtype=indices.dtype)
    hits = (flat_index == positions).to(grad_out.dtype)
    return (hits * flat_grad).sum(dim=-2).reshape(lead + (height, width))


def _zeros_like_along(grad: torch.Tensor, input_sizes: Sequence[int], dim: int, length) -> torch.Tensor:
    shape = list(input_sizes)
    shape[dim] = length
    return grad.new_zeros(shape)


def select_backward(grad: torch.Tensor, input_sizes: Sequence[int], dim: int, index: int) -> torch.Tensor:
    """Gradient of x.select(dim, index): the output gradient placed between zero blocks (a Concat,
    instead of torch's scatter into a zero tensor, which the ONNX exporter cannot translate)."""
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    index = index % size if isinstance(index, int) else index
    parts = [
        _zeros_like_along(grad, input_sizes, dim, index),
        grad.unsqueeze(dim),
        _zeros_like_along(grad, input_sizes, dim, size - index - 1),
    ]
    return torch.cat([p for p in parts if not (isinstance(p.shape[dim], int) and p.shape[dim] == 0)], dim=dim)


def slice_backward(
    grad: torch.Tensor, input_sizes: Sequence[int], dim: int, start: int, end: int, step: int
) -> torch.Tensor:
    """Gradient of x[start:end:step] along ``dim`` as a zero-padded Concat (step 1), else torch's own."""
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    if step != 1 or not isinstance(size, int):
        return torch_decomp.decomposition_table[aten.slice_backward.default](grad, input_sizes, dim, start, end, step)
    start = max(0, min(size, start + size if start < 0 else start))
    end = max(start, min(size, end + size if end < 0 else end))
    parts = [
        _zeros_like_along(grad, input_sizes, dim, start),
        grad,
        _zeros_like_along(grad, input_sizes, dim, size - end),
    ]
    return torch.cat([p for p in parts if p.shape[dim] != 0], dim=dim)


def decomposition_table() -> dict[Callable, Callable]:
    """All decompositions used while tracing the joint forward+backward graph."""
    table = torch_decomp.get_decompositions(_TORCH_DECOMPOSED)
    table[aten.convolution_backward.default] = convolution_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    table[aten.adaptive_max_pool2d.default] = adaptive_max_pool2d
    table[aten.adaptive_max_pool2d_backward.default] = adaptive_max_pool2d_backward
    table[aten.select_backward.default] = select_backward
    table[aten.slice_backward.default] = slice_backward
    table.update(decomp_avgpool.decompositions())  # avg_pool{1,2}d backward (torch registers none)
    table.update(decomp_prelu.decompositions())
    return table
