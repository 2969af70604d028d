"""LayerNorm as one Triton kernel over blocks of rows: `FastConfig(fused_norm=True)` (`otas.adapt.fast`).

In a ViT-Tiny at batch 256 on an H200, PyTorch's LayerNorm kernel takes about a third of a γ = 0
forward (25 calls, ~88 µs each for 25 MB in and out: one thread block per 192-channel row,
docs/gpu.md). Here one program normalises `BLOCK_M` rows at once, statistics in fp32, one rounding to
the output dtype: the same function as `torch.nn.functional.layer_norm` up to that rounding.

Runs on CUDA tensors; with TRITON_INTERPRET=1 in the environment before triton is imported, Triton's
interpreter runs it on CPU tensors (slowly: for tests). Inference only (no autograd).
"""

from __future__ import annotations

import copy

import torch
import triton
import triton.language as tl
from torch import nn

from otas.adapt.triton_merge import check_device  # noqa: F401  (checked by `ops.triton_kernels`)

TILE = 4096  # elements per program: BLOCK_M rows of BLOCK_C channels


@triton.jit
def _layer_norm_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    M,
    C,
    s_xm,
    s_ym,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    c_ok = cols < C
    mask = (rows < M)[:, None] & c_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * s_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * s_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`F.layer_norm(x, (C,), weight, bias, eps)` for x (..., C): one kernel, fp32 statistics."""
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(
                f"layer_norm over the last dim of {tuple(x.shape)}: {name} must be ({C},), got {tuple(p.shape)}"
            )
    x2 = x.reshape(-1, C)  # a view where the leading dims allow it
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    block_c = triton.next_power_of_2(C)
    block_m = max(1, min(64, TILE // block_c))
    M = x2.shape[0]
    _layer_norm_kernel[(triton.cdiv(M, block_m),)](
        x2,
        weight if weight is not None else x2,  # not read without HAS_W
        bias if bias is not None else x2,
        y,
        M,
        C,
        x2.stride(0),
        y.stride(0),
        eps,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
        num_warps=4 if block_c <= 512 else 8,
    )
    return y.view(x.shape)


class FusedLayerNorm(nn.Module):
    """An `nn.LayerNorm` over the last dim, run by `layer_norm` (same parameters, shared)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"FusedLayerNorm normalises the last dim only, got {tuple(norm.normalized_shape)}")
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


def with_fused_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` whose `nn.LayerNorm`s over one dim are `FusedLayerNorm`s sharing their
    parameters (the copy's modules are new, the tensors are the same: no extra weight memory)."""
    model = copy.copy(model)
    memo = {id(p): p for p in model.parameters()}  # deepcopy keeps these tensors: parameters are shared
    memo.update({id(b): b for b in model.buffers()})
    model = copy.deepcopy(model, memo)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # nn.LayerNorm and its subclasses that compute the same function (timm's LayerNorm)
            if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                setattr(parent, name, FusedLayerNorm(child))
    return model
