"""One ToMe merge step in two Triton kernels: `merge_impl="triton"` (`otas.adapt.ops`).

The reference step (`merge.py`) and the matmul one are ~15-20 small kernels per block on a GPU
(norms, a batched matmul, max, argsort, gathers, scatters, concatenations). Here:

- `_match_kernel`, one program per image: the keys summed over heads (so the caller need not average
  them: the direction is the mean's), cosine scores of A (even) against B (odd) tokens in tiles of
  `tl.dot`, each A token's best partner (first index on ties, as `torch.max`), and its rank by
  descending score (the number of A tokens with a higher score, or an equal one and a lower index:
  deterministic, where the reference's `argsort` may order equal scores either way). It writes where
  every A token goes: its partner's output row if it merges, per kept row which A token fills it, and
  the merged A tokens sorted by destination.
- `_merge_kernel`, one program per (image, block of output rows, block of channels): every output row
  takes its own token (prefix, kept A or B token); blocks holding B rows add the A tokens merged into
  them, read from their slice of the sorted list (each merged token is read once per channel block),
  as `tl.dot`s of size-weighted one-hot tiles. Sums and the division are in fp32, one rounding to x's
  dtype at the end; no atomics, so the result is deterministic.

Output layout as the reference: prefix tokens, kept A tokens by descending score, then the B tokens.
No host synchronisation and shapes depend only on (B, N, C, r), so a CUDA graph captures it. Runs on
CUDA tensors; with TRITON_INTERPRET=1 in the environment before triton is imported (torch imports
it), Triton's interpreter runs it on CPU tensors (slowly: for tests). Inference only (no autograd).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_J = 32  # B tokens per score tile in `_match_kernel`
BLOCK_O = 32  # output rows per `_merge_kernel` program
BLOCK_T = 32  # A tokens per one-hot tile in `_merge_kernel`
BLOCK_C = 64  # channels per `_merge_kernel` program
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # sums are fp32: float64 would lose its precision


@triton.jit
def _key_rows(base, rows, valid, d, H, s_h, s_n, s_d, VEC: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows `rows` (R,) of keys (H, N, d) at `base`, summed over the H heads and divided by their norm
    (fp32, zeros where not `valid`): the unit vector of the head-mean key, as cosine scores need.
    `s_h` and `s_n` are in units of VEC elements, so the compiler sees rows aligned for vector loads
    (a qkv view's row stride, e.g. 3·3·72, is not a multiple of 16 and would otherwise load by element)."""
    k = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (k < d)[None, :]
    m = tl.zeros([R, BLOCK_D], tl.float32)  # R = len(rows)
    for h in range(H):
        ptr = base + h * (s_h * VEC) + rows[:, None] * (s_n * VEC) + k[None, :] * s_d
        m += tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(m * m, axis=1))
    return m / tl.where(valid, norm, 1.0)[:, None]


@triton.jit(do_not_specialize=["N", "prefix", "r"])  # one compiled kernel for every r and prefix
def _match_kernel(
    metric_ptr,  # keys (B, H, N, d): their mean over heads is the matching metric
    a_row_ptr,  # (B, na) int32 out: the output row a merged A token adds to, -1 if it is kept
    kept_ptr,  # (B, na - r) int32 out: the A token that fills kept row k
    src_ptr,  # (B, r) int32 out: the merged A tokens, by destination (then index)
    N,
    prefix,
    r,
    d,
    H,
    s_mb,
    s_mh,
    s_mn,
    s_md,
    VEC: tl.constexpr,  # s_mb, s_mh and s_mn are given in units of VEC elements
    BLOCK_A: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    na, nb = (N - prefix + 1) // 2, (N - prefix) // 2
    base = metric_ptr + b * (s_mb * VEC)
    i = tl.arange(0, BLOCK_A)
    a = _key_rows(base, prefix + 2 * i, i < na, d, H, s_mh, s_mn, s_md, VEC, BLOCK_A, BLOCK_D).to(
        metric_ptr.dtype.element_ty
    )
    best = tl.full([BLOCK_A], float("-inf"), tl.float32)
    partner = tl.zeros([BLOCK_A], tl.int32)
    # a NaN score (a zero key) is never `better`, so `best` stays a number and the ranks a permutation
    for j0 in range(0, nb, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        bt = _key_rows(base, prefix + 2 * j + 1, j < nb, d, H, s_mh, s_mn, s_md, VEC, BLOCK_J, BLOCK_D)
        bt = bt.to(metric_ptr.dtype.element_ty)
        s = tl.dot(a, tl.trans(bt), input_precision=PRECISION)  # (BLOCK_A, BLOCK_J) fp32
        s = tl.where((j < nb)[None, :], s, float("-inf"))
        tile_best, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best  # strictly: an equal score in a later tile keeps the first index
        partner = tl.where(better, tile_arg + j0, partner)
        best = tl.where(better, tile_best, best)
    # OPTIMIZATION: rank by counting (BLOCK_A^2 comparisons in registers) instead of sorting
    ahead = (best[None, :] > best[:, None]) | ((best[None, :] == best[:, None]) & (i[None, :] < i[:, None]))
    rank = tl.sum((ahead & (i < na)[None, :]).to(tl.int32), axis=1)  # (BLOCK_A,)
    valid = i < na
    merged = valid & (rank < r)
    tl.store(a_row_ptr + b * na + i, tl.where(merged, prefix + na - r + partner, -1), mask=valid)
    tl.store(kept_ptr + b * (na - r) + rank - r, i, mask=valid & ~merged)
    # the merged A tokens sorted by destination, so each block of B rows reads only its own
    first = (partner[None, :] < partner[:, None]) | ((partner[None, :] == partner[:, None]) & (i[None, :] < i[:, None]))
    slot = tl.sum((first & merged[None, :]).to(tl.int32), axis=1)  # (BLOCK_A,)
    tl.store(src_ptr + b * r + slot, i, mask=merged)


@triton.jit(do_not_specialize=["N", "prefix", "r"])
def _merge_kernel(
    x_ptr,
    size_ptr,
    a_row_ptr,
    kept_ptr,
    src_ptr,
    out_ptr,
    out_size_ptr,
    N,
    C,
    prefix,
    r,
    s_xb,
    s_xn,
    s_xc,
    s_sb,
    s_sn,
    s_ob,
    s_on,
    s_oc,
    s_qb,
    s_qn,
    BLOCK_A: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b, pid_o, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    na = (N - prefix + 1) // 2
    dst0 = prefix + na - r  # the first B row
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # output rows
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, c_ok = o < N - r, c < C
    # every output row's own token: prefix token, kept A token (from the match), or B token
    kept = tl.load(kept_ptr + b * (na - r) + o - prefix, mask=row_ok & (o >= prefix) & (o < dst0), other=0)
    src = tl.where(o < prefix, o, tl.where(o < dst0, prefix + 2 * kept, prefix + 2 * (o - dst0) + 1))
    total = tl.load(size_ptr + b * s_sb + src * s_sn, mask=row_ok, other=0.0).to(tl.float32)  # (BLOCK_O,)
    xs = tl.load(x_ptr + b * s_xb + src[:, None] * s_xn + c[None, :] * s_xc, mask=row_ok[:, None] & c_ok[None, :])
    acc = xs.to(tl.float32) * total[:, None]  # (BLOCK_O, BLOCK_C)
    if pid_o * BLOCK_O + BLOCK_O > dst0:  # B rows here: add the A tokens merged into them
        # they are src[start:end] (`src` is sorted by destination): count the merged A tokens before
        i = tl.arange(0, BLOCK_A)
        dest_all = tl.load(a_row_ptr + b * na + i, mask=i < na, other=-1)
        start = tl.sum(((dest_all >= 0) & (dest_all < pid_o * BLOCK_O)).to(tl.int32), axis=0)
        end = tl.sum(((dest_all >= 0) & (dest_all < pid_o * BLOCK_O + BLOCK_O)).to(tl.int32), axis=0)
        for k0 in range(start, end, BLOCK_T):
            k = k0 + tl.arange(0, BLOCK_T)
            k_ok = k < end
            t = tl.load(src_ptr + b * r + k, mask=k_ok, other=0)  # A tokens
            dest = tl.load(a_row_ptr + b * na + t, mask=k_ok, other=-1)
            w = tl.load(size_ptr + b * s_sb + (prefix + 2 * t) * s_sn, mask=k_ok, other=0.0)
            xa = tl.load(
                x_ptr + b * s_xb + (prefix + 2 * t)[:, None] * s_xn + c[None, :] * s_xc,
                mask=k_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            hit = dest[None, :] == o[:, None]  # (BLOCK_O, BLOCK_T): A token t merges into row o
            onehot = tl.where(hit, w[None, :], 0.0).to(x_ptr.dtype.element_ty)  # the model keeps size in x's dtype
            acc = tl.dot(onehot, xa, acc, input_precision=PRECISION)
            total += tl.sum(tl.where(hit, w[None, :].to(tl.float32), 0.0), axis=1)
    out = acc / tl.where(row_ok, total, 1.0)[:, None]
    tl.store(
        out_ptr + b * s_ob + o[:, None] * s_on + c[None, :] * s_oc,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & c_ok[None, :],
    )
    tl.store(out_size_ptr + b * s_qb + o * s_qn, total.to(out_size_ptr.dtype.element_ty), mask=row_ok & (pid_c == 0))


INTERPRETED = not isinstance(_match_kernel, triton.runtime.JITFunction)
"""Whether Triton's interpreter runs the kernels (TRITON_INTERPRET=1 when triton was imported)."""


def check_device(
    device: torch.device | str, what: str = "merge_impl 'triton'", instead: str = "use 'matmul' (or 'reference')"
) -> None:
    """Raise ValueError unless Triton kernels can run on `device` (CUDA, or any with the interpreter)."""
    if torch.device(device).type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"{what} needs a CUDA device, got {device}; {instead} on a CPU, "
            "or start Python with TRITON_INTERPRET=1 to run the kernels in Triton's interpreter (slow)"
        )


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot wants every dimension >= 16


def merge_triton(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`merge_scatter`'s step: x (B, N, C), size (B, N, 1), metric (B, N, d) -> (B, N - r, C), (B, N - r, 1).

    `metric` may also be the keys per head, (B, H, N, d) (any strides, e.g. a view into the qkv output):
    the kernel sums them over heads itself, which is the mean's direction, so no reduction runs before it."""
    B, N, C = x.shape
    keys = metric if metric.dim() == 4 else metric[:, None]  # (B, H, N, d): one "head" for a 3-d metric
    if size.shape != (B, N, 1) or metric.dim() not in (3, 4) or keys.shape[0] != B or keys.shape[2] != N:
        raise ValueError(f"x {tuple(x.shape)}: size must be {(B, N, 1)} and metric ({B}, {N}, d) or keys "
                         f"({B}, H, {N}, d), got {tuple(size.shape)} and {tuple(metric.shape)}")  # fmt: skip
    na, nb = (N - prefix + 1) // 2, (N - prefix) // 2
    if not 0 <= r <= nb:
        raise ValueError(f"r={r}: merge at most {nb} of the {N - prefix} tokens after a prefix of {prefix}")
    check_device(x.device)
    if {x.dtype, size.dtype, metric.dtype} - set(DTYPES):
        got = f"{x.dtype}, {size.dtype}, {metric.dtype}"
        raise ValueError(f"merge_triton sums in fp32: use tensors of {DTYPES}, got {got}; use 'matmul' for float64")
    a_row = torch.empty(B, max(na, 1), dtype=torch.int32, device=x.device)
    kept = torch.empty(B, max(na - r, 1), dtype=torch.int32, device=x.device)
    src = torch.empty(B, max(r, 1), dtype=torch.int32, device=x.device)
    out = torch.empty(B, N - r, C, dtype=x.dtype, device=x.device)
    out_size = torch.empty(B, N - r, 1, dtype=size.dtype, device=x.device)
    block_a = _pow2(na)
    # 16-byte vector loads of the keys where the batch, head and row strides allow them
    vec = max(16 // keys.element_size(), 1)
    vec = vec if all(st % vec == 0 for st in keys.stride()[:3]) else 1
    _match_kernel[(B,)](
        keys,
        a_row,
        kept,
        src,
        N,
        prefix,
        r,
        keys.shape[3],
        keys.shape[1],
        *(st // vec for st in keys.stride()[:3]),
        keys.stride(3),
        VEC=vec,
        BLOCK_A=block_a,
        BLOCK_J=BLOCK_J,
        BLOCK_D=_pow2(keys.shape[3]),
        PRECISION="ieee" if metric.dtype == torch.float32 else "tf32",  # fp32: exact products, as the reference
        num_warps=8 if block_a >= 128 else 4,
    )
    grid = (B, triton.cdiv(N - r, BLOCK_O), triton.cdiv(C, BLOCK_C))
    _merge_kernel[grid](
        x,
        size,
        a_row,
        kept,
        src,
        out,
        out_size,
        N,
        C,
        prefix,
        r,
        *x.stride(),
        size.stride(0),
        size.stride(1),
        *out.stride(),
        out_size.stride(0),
        out_size.stride(1),
        BLOCK_A=block_a,
        BLOCK_O=BLOCK_O,
        BLOCK_T=BLOCK_T,
        BLOCK_C=BLOCK_C,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )
    return out, out_size
