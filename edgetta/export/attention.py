"""A plain-op twin of ``nn.MultiheadAttention`` for tracing.

torch's packed in-projection differentiates through generic strided views (as_strided + copy_),
and its fused attention kernels have no decomposable backward; neither exports to standard ONNX.
This module computes the same function (Vaswani et al., 2017, Eq. 1 and multi-head Sec. 3.2.2) with
separate q/k/v projections, MatMul and Softmax only. Eval-mode semantics: no attention dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from edgetta.errors import ExportError
from edgetta.export.layers import flat_linear


class PlainMultiheadAttention(nn.Module):
    def __init__(self, source: nn.MultiheadAttention, path: str) -> None:
        super().__init__()
        if source.bias_k is not None or source.add_zero_attn:
            raise ExportError(
                f"attention module '{path}' uses add_bias_kv/add_zero_attn, which edgetta does not export"
            )
        e = source.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = e, source.num_heads, source.batch_first
        if source._qkv_same_embed_dim:
            wq, wk, wv = source.in_proj_weight.detach().split(e, dim=0)
        else:
            wq, wk, wv = (source.q_proj_weight.detach(), source.k_proj_weight.detach(), source.v_proj_weight.detach())
        self.q_weight, self.k_weight, self.v_weight = (nn.Parameter(w.clone()) for w in (wq, wk, wv))
        if source.in_proj_bias is not None:
            bq, bk, bv = source.in_proj_bias.detach().split(e, dim=0)
            self.q_bias, self.k_bias, self.v_bias = (nn.Parameter(b.clone()) for b in (bq, bk, bv))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.out_proj = source.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        lk = key.shape[1]
        h, d = self.num_heads, self.embed_dim // self.num_heads
        q = flat_linear(query, self.q_weight, self.q_bias).reshape(b, lq, h, d).transpose(1, 2)
        k = flat_linear(key, self.k_weight, self.k_bias).reshape(b, lk, h, d).transpose(1, 2)
        v = flat_linear(value, self.v_weight, self.v_bias).reshape(b, lk, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            scores = (
                scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        if key_padding_mask is not None:
            mask = key_padding_mask.reshape(b, 1, 1, lk)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, lq, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def rewrite_attention(model: nn.Module) -> list[str]:
    """Replace every nn.MultiheadAttention in place; return their paths."""
    paths = []
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and path:
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, name, PlainMultiheadAttention(module, path))
            paths.append(path)
    return paths
