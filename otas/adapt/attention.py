"""Self-attention of a timm `Attention` module with proportional attention, also returning keys.

Proportional attention (ToMe §3): a merged token standing for `size` patches should get `size`
times the attention of one patch, which is an additive log(size) bias on the attention logits.
We pass it to `F.scaled_dot_product_attention` as an additive mask so the fused kernels stay in use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_with_keys(
    attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, C), size (B, N, 1) or None -> output (B, N, C), keys averaged over heads (B, N, hd)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None
    if size is not None:
        bias = size.log().to(q.dtype).transpose(1, 2)[:, None]  # (B, 1, 1, N): per key
    drop = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)  # (B, H, N, hd)
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    return out, k.mean(dim=1)


def attention_reference(attn: nn.Module, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(q k^T * scale + log size) v, for tests of the fused path."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q @ k.transpose(-1, -2)) * attn.head_dim**-0.5  # (B, H, N, N)
    logits = logits + size.log().transpose(1, 2)[:, None]
    out = logits.softmax(dim=-1) @ v
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj(out)
