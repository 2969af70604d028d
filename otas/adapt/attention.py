"""Self-attention of a timm `Attention` module with proportional attention, also returning keys.

Proportional attention (ToMe §3): a merged token standing for `size` patches should get `size`
times the attention of one patch, which is an additive log(size) bias on the attention logits.
We pass it to `F.scaled_dot_product_attention` as an additive mask (`attention_with_keys`), or, with
`attention_size_column`, as one more head-dim column (q·k gains log(size)), so no mask is needed and
the mask-free kernels (flash) serve proportional attention too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def attention_with_keys(
    attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, mean_keys: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, C), size (B, N, 1) or None -> output (B, N, C), keys averaged over heads (B, N, hd), or
    with `mean_keys=False` the keys per head (B, H, N, hd) (a view: for a merge that reduces them itself)."""
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
    return out, k.mean(dim=1) if mean_keys else k


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


@dataclass
class ColumnWeights:
    """qkv and proj weights of one `Attention` with every head padded from hd to hp = hd + 1 rounded up to 8.

    Per head, q gets a constant column 1 / scale (from the bias), k a column to be filled with
    log(size), v zeros; so (q·k) * scale gains exactly log(size). proj reads zeros at the padding.
    """

    qkv_w: torch.Tensor  # (3 * H * hp, C)
    qkv_b: torch.Tensor  # (3 * H * hp,)
    proj_w: torch.Tensor  # (C, H * hp)
    hp: int


def supports_size_column(attn: nn.Module) -> bool:
    """The padded layout needs plain heads: no q/k norm over the head dim, no output norm or gate."""
    plain = [getattr(attn, n, None) for n in ("q_norm", "k_norm", "norm")]
    return all(m is None or isinstance(m, nn.Identity) for m in plain) and getattr(attn, "gate", None) is None


@torch.no_grad()
def column_weights(attn: nn.Module) -> ColumnWeights:
    """Padded copies of `attn`'s weights (same device and dtype) for `attention_size_column`."""
    H, hd = attn.num_heads, attn.head_dim
    hp = -(-(hd + 1) // 8) * 8  # fused kernels want head dims that are multiples of 8
    W = attn.qkv.weight  # (3 * H * hd, C)
    C = W.shape[1]
    qkv_w = W.new_zeros(3, H, hp, C)
    qkv_w[:, :, :hd] = W.view(3, H, hd, C)
    qkv_b = W.new_zeros(3, H, hp)
    if attn.qkv.bias is not None:
        qkv_b[:, :, :hd] = attn.qkv.bias.view(3, H, hd)
    qkv_b[0, :, hd] = 1 / attn.scale  # the q column: (1 / scale) * log(size) * scale = log(size)
    proj_w = W.new_zeros(C, H, hp)
    proj_w[:, :, :hd] = attn.proj.weight.view(C, H, hd)
    return ColumnWeights(qkv_w.view(-1, C), qkv_b.view(-1), proj_w.view(C, -1), hp)


def attention_size_column(
    attn: nn.Module, cw: ColumnWeights, x: torch.Tensor, size: torch.Tensor, mean_keys: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_with_keys` with the log(size) bias as an extra q·k term instead of a mask.

    x (B, N, C), size (B, N, 1) -> output (B, N, C), keys averaged over heads (B, N, hd) (or per head,
    (B, H, N, hd), with `mean_keys=False`). The bias
    column is written into the qkv projection's own output, so no tensor is concatenated.
    """
    B, N, _ = x.shape
    H, hd, hp = attn.num_heads, attn.head_dim, cw.hp
    qkv = F.linear(x, cw.qkv_w, cw.qkv_b).view(B, N, 3, H, hp)
    column = qkv[:, :, 1, :, hd]  # (B, N, H): every head's k column gets log(size) (B, N, 1)
    if qkv.requires_grad:
        column.copy_(size.log().expand(B, N, H))  # autograd does not take out= arguments
    else:
        torch.log(size.expand(B, N, H), out=column)  # written in place by the log itself: one kernel, not two
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hp) each
    drop = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=attn.scale)  # (B, H, N, hp)
    out = F.linear(out.transpose(1, 2).reshape(B, N, H * hp), cw.proj_w, attn.proj.bias)
    return attn.proj_drop(out), k[..., :hd].mean(dim=1) if mean_keys else k[..., :hd]
