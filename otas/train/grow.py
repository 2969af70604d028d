"""Grow a trained ViT into a wider one that computes the same function (Net2WiderNet, Chen et al. 2016).

A ViT of width `k * D` with `k * H` heads (same depth, patch, tokens and head size) starts as `k` copies
of a trained ViT of width `D`: every feature of the residual stream, every attention head and every MLP
unit is repeated `k` times, and each weight that reads a repeated axis is split among its `k` copies, so
the wide model's logits equal the narrow one's at every γ (prompting and merging included: the merge
metric is the mean of the keys over the heads, which repetition leaves as it was). The split is random
per weight (shares drawn from [1 - spread, 1 + spread], normalised to sum to 1) rather than even: with an
even split the copies would receive equal gradients and stay copies forever.

Used by `otas train backbone --grow-from`: the larger model of a size ladder starts where the smaller one
ended instead of from noise.
"""

from __future__ import annotations

import torch
from torch import nn

_QKV = ("attn.qkv.weight", "attn.qkv.bias")


def width_factor(small: nn.Module, big: nn.Module) -> int:
    """k such that `big` is `small` widened k-fold; ValueError naming what does not fit."""
    d_s, d_b = small.embed_dim, big.embed_dim
    if d_b % d_s or d_b < d_s:
        raise ValueError(f"cannot grow width {d_s} into {d_b}: the new width must be a multiple of the old")
    k = d_b // d_s
    checks = {
        "depth": (len(small.blocks), len(big.blocks)),
        "heads per width": (small.blocks[0].attn.num_heads * k, big.blocks[0].attn.num_heads),
        "patch size": (tuple(small.patch_embed.patch_size), tuple(big.patch_embed.patch_size)),
        "tokens": (tuple(small.pos_embed.shape[1:2]), tuple(big.pos_embed.shape[1:2])),
        "prefix tokens": (small.num_prefix_tokens, big.num_prefix_tokens),
        "classes": (small.num_classes, big.num_classes),
        "MLP ratio": (
            small.blocks[0].mlp.fc1.out_features * k,
            big.blocks[0].mlp.fc1.out_features,
        ),
    }
    bad = [f"{name} {a} vs {b}" for name, (a, b) in checks.items() if a != b]
    if bad:
        raise ValueError(f"cannot grow this ViT into that one ({'; '.join(bad)}): only the width may differ")
    return k


def _tile(t: torch.Tensor, axis: int, k: int, chunks: int = 1) -> torch.Tensor:
    """Repeat `t` k times along `axis`, separately within each of `chunks` equal parts (q, k, v of qkv)."""
    parts = t.chunk(chunks, dim=axis)
    return torch.cat([torch.cat([p] * k, dim=axis) for p in parts], dim=axis)


def _split(t: torch.Tensor, axis: int, k: int, spread: float, gen: torch.Generator) -> torch.Tensor:
    """Repeat `t` k times along its input `axis`, each copy scaled by random shares summing to 1."""
    share = 1.0 + spread * (2 * torch.rand((k, *t.shape), generator=gen, dtype=torch.float64) - 1)
    share = share / share.sum(0, keepdim=True)
    return torch.cat([(t.double() * share[i]).to(t.dtype) for i in range(k)], dim=axis)


@torch.no_grad()
def widen_vit(small: nn.Module, big: nn.Module, spread: float = 0.5, seed: int = 0) -> int:
    """Load `small`'s weights into `big`, widened so `big` computes the same function; returns k.

    `small` and `big` are timm VisionTransformers; `spread` in [0, 1) is how unevenly a weight is split
    among its copies (0: evenly, which leaves the copies symmetric)."""
    if not 0.0 <= spread < 1.0:
        raise ValueError(f"spread must be in [0, 1), got {spread}")
    k = width_factor(small, big)
    gen = torch.Generator().manual_seed(seed)
    src = small.state_dict()
    out = {}
    for name, b in big.state_dict().items():
        if name not in src:
            raise ValueError(f"the narrow model has no {name}: not the same ViT layout")
        s = src[name].detach().to("cpu", torch.float64)
        chunks = 3 if name.endswith(_QKV) else 1
        w = s
        for axis in range(s.ndim):
            if b.shape[axis] == s.shape[axis]:
                continue
            if b.shape[axis] != k * s.shape[axis]:
                raise ValueError(f"{name}: shape {tuple(s.shape)} does not grow into {tuple(b.shape)} by {k}")
            reads = s.ndim == 2 and name.endswith(".weight") and axis == 1  # a Linear's input features
            w = _split(w, axis, k, spread, gen) if reads else _tile(w, axis, k, chunks if axis == 0 else 1)
        out[name] = w.to(b.dtype)
    big.load_state_dict(out)
    return k
