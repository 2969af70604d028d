"""Proportional attention in one Triton kernel: `merge_impl` option "bias" (`otas.adapt.ops`).

softmax(q kᵀ · scale + log(size_j)) v, flash style (one pass over the key tiles with a running max and
sum, fp32 statistics, exp2), reading q, k and v straight from the qkv projection's output (B, N, 3, H, hd)
and size (B, N, 1) as it is, and writing (B, N, H·hd), the layout the output projection reads. So a
merged block runs its attention at the model's own head dim: no padded qkv and proj weights and no
log(size) column ("column"), no materialised mask ("reference"), no log kernel, no transpose copy.

Runs on CUDA tensors; with TRITON_INTERPRET=1 in the environment before triton is imported, Triton's
interpreter runs it on CPU tensors (slowly: for tests). Inference only (no autograd).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import nn

BLOCK_M = 64  # queries per program
BLOCK_N = 32  # keys per tile of the loop (32 beat 64 on an H200 at N = 101..257, bench sdpa phase)
WARPS = 4
STAGES = 2
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit(do_not_specialize=["N"])
def _attention_kernel(
    qkv_ptr,
    size_ptr,
    out_ptr,
    N,
    H,
    s_b,
    s_n,
    s_t,
    s_h,
    s_sb,
    s_sn,
    s_ob,
    s_on,
    qk_scale,  # scale · log2(e): the logits in base 2
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_SIZE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    base = qkv_ptr + b * s_b + h * s_h
    q = tl.load(base + m[:, None] * s_n + d[None, :], mask=(m < N)[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < N
        k = tl.load(base + s_t + n[:, None] * s_n + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        # (BLOCK_M, BLOCK_N), base-2 logits; cast back to fp32: Inductor, compiling this kernel inside a
        # torch.compile'd forward, passes the Python float as fp64, which would make the statistics fp64
        s = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale).to(tl.float32)
        if HAS_SIZE:
            sz = tl.load(size_ptr + b * s_sb + n * s_sn, mask=n_ok, other=1.0).to(tl.float32)
            s += tl.log2(sz)[None, :]  # log(size) in base 2
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(base + 2 * s_t + n[:, None] * s_n + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    ptr = out_ptr + b * s_ob + m[:, None] * s_on + h * D + d[None, :]
    tl.store(ptr, out.to(out_ptr.dtype.element_ty), mask=(m < N)[:, None] & d_ok[None, :])


def check_device(device: torch.device | str, what: str = "merge_impl option 'bias'", instead: str = "") -> None:
    from otas.adapt.triton_merge import check_device as check

    check(device, what, instead or "use 'column' (or 'reference')")


def attention_qkv(qkv: torch.Tensor, size: torch.Tensor | None, scale: float) -> torch.Tensor:
    """qkv (B, N, 3, H, hd) (the projection's output viewed so; the last dim contiguous), size (B, N, 1)
    or None -> softmax(q kᵀ · scale + log size) v as (B, N, H · hd)."""
    B, N, three, H, D = qkv.shape
    if three != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"qkv must be (B, N, 3, H, hd) with a contiguous last dim, got {tuple(qkv.shape)}")
    if size is not None and size.shape != (B, N, 1):
        raise ValueError(f"size must be {(B, N, 1)}, got {tuple(size.shape)}")
    if qkv.dtype not in DTYPES:
        raise ValueError(f"attention_qkv sums in fp32: use tensors of {DTYPES}, got {qkv.dtype}")
    check_device(qkv.device)
    out = torch.empty(B, N, H * D, dtype=qkv.dtype, device=qkv.device)
    sz = size if size is not None else out  # not read
    grid = (triton.cdiv(N, BLOCK_M), B * H)
    _attention_kernel[grid](
        qkv,
        sz,
        out,
        N,
        H,
        qkv.stride(0),
        qkv.stride(1),
        qkv.stride(2),
        qkv.stride(3),
        sz.stride(0),
        sz.stride(1),
        out.stride(0),
        out.stride(1),
        scale * math.log2(math.e),
        D=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        HAS_SIZE=size is not None,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        num_warps=WARPS,
        num_stages=STAGES,
    )
    return out


def attention_bias(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain timm `Attention` (`supports_size_column`) with proportional attention in one kernel:
    x (B, N, C), size (B, N, 1) or None -> output (B, N, C), keys per head (B, H, N, hd) (a view into
    the qkv output, for a merge that sums them itself)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).view(B, N, 3, attn.num_heads, attn.head_dim)
    out = attn.proj_drop(attn.proj(attention_qkv(qkv, size, attn.scale)))  # no attention dropout: inference only
    return out, qkv.permute(2, 0, 3, 1, 4)[1]
