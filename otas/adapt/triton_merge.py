"""One ToMe merge step in two Triton kernels: `merge_impl="triton"` (`otas.adapt.ops`).

The reference step (`merge.py`) and the matmul one are ~15-20 small kernels per block on a GPU
(norms, a batched matmul, max, argsort, gathers, scatters, concatenations). Here a step is a match
and a merge, in one of two pairs of kernels chosen on the host by the batch size (shapes are static
per CUDA graph, so the choice is too); both compute the same thing with the same tie rules.

The match: each A (even) token's best B (odd) partner by cosine score, from the keys summed over heads
(so the caller need not average them: the direction is the mean's), in tiles of `tl.dot`; first index
on ties, as `torch.max`. Then the plan (`_order`): the A tokens ranked by descending score, then index
(deterministic, where the reference's `argsort` may order equal scores either way), by one sort of
(score, index) keys; the first r merge into their partners; and the merged tokens sorted by destination,
so each block of B rows reads only its own.

- large batches: `_match_kernel`, one program per image, matches and writes the plan (per A token its
  output row if it merges, per kept row its A token, the merged A tokens by destination); then
  `_merge_kernel` reads it.
- small batches (B <= `SPLIT_MAX_BATCH`, where one program per image leaves most of the GPU idle):
  `_score_kernel`, one program per image and block of `BLOCK_S` A tokens, writes only each token's best
  score and partner; then every `_merge_kernel` program makes the plan of its image for itself in
  registers (`PLAN`), so the step stays two launches.

`_merge_kernel`, one program per (image, block of output rows, block of channels): every output row
takes its own token (prefix, kept A or B token); blocks holding B rows add the A tokens merged into
them, as `tl.dot`s of size-weighted one-hot tiles (each merged token is read once per channel block).
Sums and the division are in fp32, one rounding to x's dtype at the end; no atomics, so the result is
deterministic.

Output layout as the reference: prefix tokens, kept A tokens by descending score, then the B tokens.
No host synchronisation and shapes depend only on (B, N, C, r), so a CUDA graph captures it. Runs on
CUDA tensors; with TRITON_INTERPRET=1 in the environment before triton is imported (torch imports
it), Triton's interpreter runs it on CPU tensors (slowly: for tests). Inference only (no autograd).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_J = 32  # B tokens per score tile of `_match_kernel`
SPLIT_BLOCK_J = 64  # B tokens per score tile of `_score_kernel` (at most: fewer if nb is smaller)
BLOCK_S = 16  # A tokens per `_score_kernel` program (tl.dot's smallest tile)
SPLIT_MAX_BATCH = 8  # batches up to this size match with `_score_kernel` and plan in `_merge_kernel`
MATCH_WARPS = (4, 8)  # warps of a match program with up to 64 A tokens / more
# shared memory for the key tiles a match loop prefetches (Triton 3.6 software-pipelines the loop over B tiles:
# two tiles of 12 heads x 128 x 64 bf16 ahead overflowed an H200's 227 KB)
STAGE_BYTES = 96 * 1024
BLOCK_O = 32  # output rows per `_merge_kernel` program
BLOCK_T = 32  # A tokens per one-hot tile in `_merge_kernel`
BLOCK_C = 64  # channels per `_merge_kernel` program
MERGE_WARPS = 4  # warps of a `_merge_kernel` program
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # sums are fp32: float64 would lose its precision


@triton.jit
def _key_rows(
    base, rows, valid, d, s_h, s_n, s_d, HEADS: tl.constexpr, VEC: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Rows `rows` (R,) of keys (HEADS, N, d) at `base`, summed over the heads and divided by their norm
    (fp32, zeros where not `valid`): the unit vector of the head-mean key, as cosine scores need.
    `s_h` and `s_n` are in units of VEC elements, so the compiler sees rows aligned for vector loads
    (a qkv view's row stride, e.g. 3·3·72, is not a multiple of 16 and would otherwise load by element).
    The heads are unrolled, so their loads are all in flight at once."""
    k = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (k < d)[None, :]
    m = tl.zeros([R, BLOCK_D], tl.float32)  # R = len(rows)
    for h in tl.static_range(HEADS):
        ptr = base + h * (s_h * VEC) + rows[:, None] * (s_n * VEC) + k[None, :] * s_d
        m += tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(m * m, axis=1))
    return m / tl.where(valid, norm, 1.0)[:, None]


@triton.jit
def _best_partner(
    base,
    i,  # (BLOCK_I,) A token indices; those >= na are padding
    na,
    nb,
    prefix,
    d,
    s_h,
    s_n,
    s_d,
    HEADS: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Each A token's best cosine score against the B tokens and the first B token that reaches it."""
    a = _key_rows(base, prefix + 2 * i, i < na, d, s_h, s_n, s_d, HEADS, VEC, BLOCK_I, BLOCK_D)
    a = a.to(base.dtype.element_ty)
    best = tl.full([BLOCK_I], float("-inf"), tl.float32)
    partner = tl.zeros([BLOCK_I], tl.int32)
    for j0 in range(0, nb, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        bt = _key_rows(base, prefix + 2 * j + 1, j < nb, d, s_h, s_n, s_d, HEADS, VEC, BLOCK_J, BLOCK_D)
        s = tl.dot(a, tl.trans(bt.to(base.dtype.element_ty)), input_precision=PRECISION)  # (BLOCK_I, BLOCK_J) fp32
        # a NaN score (a zero key) counts as -inf: never a best, so `best` stays a number, the ranks a permutation
        s = tl.where((j < nb)[None, :] & (s == s), s, float("-inf"))
        tile_best, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best  # strictly: an equal score in a later tile keeps the first index
        partner = tl.where(better, tile_arg + j0, partner)
        best = tl.where(better, tile_best, best)
    return best, partner


@triton.jit
def _order(best, partner, na, r, BLOCK_A: tl.constexpr):
    """From every A token's best score and partner (BLOCK_A,), in registers: the A token of each rank (by
    descending score, then index), whether each token merges (rank < r), and the merged tokens sorted by
    (destination, token) as keys partner * BLOCK_A + token (the first r of the BLOCK_A)."""
    i = tl.arange(0, BLOCK_A)
    valid = i < na
    # OPTIMIZATION: sort (score, index) keys instead of counting the BLOCK_A^2 pairs ahead of each token.
    # A float's bits read as an int32, with a negative one's magnitude bits flipped, order as the float
    # does; -0.0 is made +0.0 (they tie).
    bits = tl.where(best == 0.0, 0.0, best).to(tl.int32, bitcast=True)
    score = tl.where(valid, tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits), -2147483648)  # padding after -inf
    key = (score.to(tl.int64) << 32) | (BLOCK_A - 1 - i)  # descending key: a lower index first on ties
    order = tl.sort(key, descending=True)
    token = BLOCK_A - 1 - (order & 0xFFFFFFFF).to(tl.int32)
    threshold = tl.max(tl.where(i == r - 1, order, -9223372036854775807), axis=0)  # key of rank r - 1
    merged = valid & (key >= threshold) & (r > 0)
    by_dest = tl.sort(tl.where(merged, partner * BLOCK_A + i, 1 << 30))  # partner < na <= BLOCK_A
    return token, merged, by_dest


@triton.jit
def _plan(b, best, partner, na, r, prefix, a_row_ptr, kept_ptr, src_ptr, BLOCK_A: tl.constexpr):
    """`_order`, written out: `a_row` by token, `kept` by rank, `src` by (destination, token)."""
    i = tl.arange(0, BLOCK_A)  # A tokens, and positions in sorted order
    token, merged, by_dest = _order(best, partner, na, r, BLOCK_A)
    tl.store(a_row_ptr + b * na + i, tl.where(merged, prefix + na - r + partner, -1), mask=i < na)
    tl.store(kept_ptr + b * (na - r) + i - r, token, mask=(i < na) & (i >= r))
    tl.store(src_ptr + b * r + i, by_dest % BLOCK_A, mask=i < r)


@triton.jit(do_not_specialize=["N", "prefix", "r"])  # one compiled kernel for every r and prefix
def _match_kernel(
    metric_ptr,  # keys (B, HEADS, N, d): their mean over heads is the matching metric
    a_row_ptr,  # (B, na) int32 out: the output row a merged A token adds to, -1 if it is kept
    kept_ptr,  # (B, na - r) int32 out: the A token that fills kept row k
    src_ptr,  # (B, r) int32 out: the merged A tokens, by destination (then index)
    N,
    prefix,
    r,
    d,
    s_mb,
    s_mh,
    s_mn,
    s_md,
    HEADS: tl.constexpr,
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
    best, partner = _best_partner(
        base, i, na, nb, prefix, d, s_mh, s_mn, s_md, HEADS, VEC, BLOCK_A, BLOCK_J, BLOCK_D, PRECISION
    )
    _plan(b, best, partner, na, r, prefix, a_row_ptr, kept_ptr, src_ptr, BLOCK_A)


@triton.jit(do_not_specialize=["N", "prefix"])
def _score_kernel(
    metric_ptr,  # keys (B, HEADS, N, d), as `_match_kernel`'s
    best_ptr,  # (B, na) fp32 out: each A token's best score
    partner_ptr,  # (B, na) int32 out: the B token that has it
    N,
    prefix,
    d,
    s_mb,
    s_mh,
    s_mn,
    s_md,
    HEADS: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    na, nb = (N - prefix + 1) // 2, (N - prefix) // 2
    base = metric_ptr + b * (s_mb * VEC)
    i = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)  # this program's A tokens
    best, partner = _best_partner(
        base, i, na, nb, prefix, d, s_mh, s_mn, s_md, HEADS, VEC, BLOCK_S, BLOCK_J, BLOCK_D, PRECISION
    )
    tl.store(best_ptr + b * na + i, best, mask=i < na)
    tl.store(partner_ptr + b * na + i, partner, mask=i < na)


@triton.jit(do_not_specialize=["N", "prefix", "r"])
def _merge_kernel(
    x_ptr,
    h_ptr,  # with ADD: merged are the tokens of x + h, added in x's dtype as they are read
    size_ptr,
    a_row_ptr,  # `_match_kernel`'s plan (not read with PLAN)
    kept_ptr,
    src_ptr,
    best_ptr,  # with PLAN: `_score_kernel`'s output, from which each program plans for itself
    partner_ptr,
    out_ptr,
    out_size_ptr,
    N,
    C,
    prefix,
    r,
    s_xb,
    s_xn,
    s_xc,
    s_hb,
    s_hn,
    s_hc,
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
    PLAN: tl.constexpr,
    ADD: tl.constexpr,
):
    b, pid_o, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    na = (N - prefix + 1) // 2
    dst0 = prefix + na - r  # the first B row
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # output rows
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, c_ok = o < N - r, c < C
    i = tl.arange(0, BLOCK_A)
    # every output row's own token: prefix token, kept A token (from the match), or B token
    if PLAN:  # OPTIMIZATION (small batches): the plan in registers, one kernel launch fewer per step
        best = tl.load(best_ptr + b * na + i, mask=i < na, other=float("-inf"))
        partner = tl.load(partner_ptr + b * na + i, mask=i < na, other=0)
        token, merged, by_dest = _order(best, partner, na, r, BLOCK_A)
        dest_all = tl.where(merged, dst0 + partner, -1)
        kept = tl.sum(tl.where(i[None, :] == (o - prefix + r)[:, None], token[None, :], 0), axis=1)  # token of rank
    else:
        kept = tl.load(kept_ptr + b * (na - r) + o - prefix, mask=row_ok & (o >= prefix) & (o < dst0), other=0)
        dest_all = tl.load(a_row_ptr + b * na + i, mask=i < na, other=-1)
    src = tl.where(o < prefix, o, tl.where(o < dst0, prefix + 2 * kept, prefix + 2 * (o - dst0) + 1))
    total = tl.load(size_ptr + b * s_sb + src * s_sn, mask=row_ok, other=0.0).to(tl.float32)  # (BLOCK_O,)
    xs = tl.load(x_ptr + b * s_xb + src[:, None] * s_xn + c[None, :] * s_xc, mask=row_ok[:, None] & c_ok[None, :])
    if ADD:  # rounded to x's dtype, as x + h would be
        hs = tl.load(h_ptr + b * s_hb + src[:, None] * s_hn + c[None, :] * s_hc, mask=row_ok[:, None] & c_ok[None, :])
        xs = (xs.to(tl.float32) + hs.to(tl.float32)).to(x_ptr.dtype.element_ty)
    acc = xs.to(tl.float32) * total[:, None]  # (BLOCK_O, BLOCK_C)
    if pid_o * BLOCK_O + BLOCK_O > dst0:  # B rows here: add the A tokens merged into them
        # they are src[start:end] (`src` is sorted by destination): count the merged A tokens before
        start = tl.sum(((dest_all >= 0) & (dest_all < pid_o * BLOCK_O)).to(tl.int32), axis=0)
        end = tl.sum(((dest_all >= 0) & (dest_all < pid_o * BLOCK_O + BLOCK_O)).to(tl.int32), axis=0)
        for k0 in range(start, end, BLOCK_T):
            k = k0 + tl.arange(0, BLOCK_T)
            k_ok = k < end
            if PLAN:  # src[k] and its destination, gathered from the sorted keys
                key = tl.sum(tl.where(i[None, :] == k[:, None], by_dest[None, :], 0), axis=1)  # (BLOCK_T,)
                t = tl.where(k_ok, key % BLOCK_A, 0)
                dest = tl.where(k_ok, dst0 + key // BLOCK_A, -1)
            else:
                t = tl.load(src_ptr + b * r + k, mask=k_ok, other=0)  # A tokens
                dest = tl.load(a_row_ptr + b * na + t, mask=k_ok, other=-1)
            w = tl.load(size_ptr + b * s_sb + (prefix + 2 * t) * s_sn, mask=k_ok, other=0.0)
            xa = tl.load(
                x_ptr + b * s_xb + (prefix + 2 * t)[:, None] * s_xn + c[None, :] * s_xc,
                mask=k_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            if ADD:
                ha = tl.load(
                    h_ptr + b * s_hb + (prefix + 2 * t)[:, None] * s_hn + c[None, :] * s_hc,
                    mask=k_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                xa = (xa.to(tl.float32) + ha.to(tl.float32)).to(x_ptr.dtype.element_ty)
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


def _key_meta(keys: torch.Tensor) -> tuple[tuple[int, ...], dict]:
    """The strides and compile-time constants the match kernels read keys (B, H, N, d) with."""
    # 16-byte vector loads of the keys where the batch, head and row strides allow them
    vec = max(16 // keys.element_size(), 1)
    vec = vec if all(st % vec == 0 for st in keys.stride()[:3]) else 1
    strides = (*(st // vec for st in keys.stride()[:3]), keys.stride(3))
    precision = "ieee" if keys.dtype == torch.float32 else "tf32"  # fp32: exact products, as the reference
    return strides, {"HEADS": keys.shape[1], "VEC": vec, "BLOCK_D": _pow2(keys.shape[3]), "PRECISION": precision}


def _stages(keys: torch.Tensor, block_j: int) -> int:
    """Pipeline depth of a loop over B tiles: it loads up to 2 tiles ahead, if they fit in `STAGE_BYTES`."""
    tile = keys.shape[1] * block_j * _pow2(keys.shape[3]) * keys.element_size()
    return 1 + min(2, STAGE_BYTES // tile)


def _match(keys: torch.Tensor, N: int, prefix: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_match_kernel` on keys (B, H, N, d): the plan (a_row, kept, src)."""
    B, d = keys.shape[0], keys.shape[3]
    na = (N - prefix + 1) // 2
    a_row = torch.empty(B, max(na, 1), dtype=torch.int32, device=keys.device)
    kept = torch.empty(B, max(na - r, 1), dtype=torch.int32, device=keys.device)
    src = torch.empty(B, max(r, 1), dtype=torch.int32, device=keys.device)
    strides, meta = _key_meta(keys)
    args = (keys, a_row, kept, src, N, prefix, r, d, *strides)
    warps = MATCH_WARPS[na > 64]
    _match_kernel[(B,)](
        *args, BLOCK_A=_pow2(na), BLOCK_J=BLOCK_J, num_warps=warps, num_stages=_stages(keys, BLOCK_J), **meta
    )
    return a_row, kept, src


def _scores(keys: torch.Tensor, N: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_score_kernel` on keys (B, H, N, d): each A token's best score and partner, (B, na) each."""
    B, d = keys.shape[0], keys.shape[3]
    na, nb = (N - prefix + 1) // 2, (N - prefix) // 2
    best = torch.empty(B, max(na, 1), dtype=torch.float32, device=keys.device)
    partner = torch.empty(B, max(na, 1), dtype=torch.int32, device=keys.device)
    strides, meta = _key_meta(keys)
    block_j = min(_pow2(nb), SPLIT_BLOCK_J)
    args = (keys, best, partner, N, prefix, d, *strides)
    grid = (B, triton.cdiv(na, BLOCK_S))
    _score_kernel[grid](*args, BLOCK_S=BLOCK_S, BLOCK_J=block_j, num_stages=_stages(keys, block_j), **meta)
    return best, partner


def merge_triton(
    x: torch.Tensor,
    size: torch.Tensor,
    metric: torch.Tensor,
    r: int,
    prefix: int,
    split: bool | None = None,
    add: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`merge_scatter`'s step: x (B, N, C), size (B, N, 1), metric (B, N, d) -> (B, N - r, C), (B, N - r, 1).

    `add` (B, N, C) of x's dtype: merge the tokens of x + add (added in x's dtype, as `x + add` would be)
    without writing the sum out: the residual add before a merge, fused into it.

    `metric` may also be the keys per head, (B, H, N, d) (any strides, e.g. a view into the qkv output):
    the kernel sums them over heads itself, which is the mean's direction, so no reduction runs before it.
    `split`: `_score_kernel`, then `_merge_kernel` planning for itself (True), or `_match_kernel`, then
    `_merge_kernel` reading its plan (False); the same result. None: split at batches up to
    `SPLIT_MAX_BATCH`, where one match program per image leaves most of the GPU idle."""
    B, N, C = x.shape
    keys = metric if metric.dim() == 4 else metric[:, None]  # (B, H, N, d): one "head" for a 3-d metric
    if size.shape != (B, N, 1) or metric.dim() not in (3, 4) or keys.shape[0] != B or keys.shape[2] != N:
        raise ValueError(f"x {tuple(x.shape)}: size must be {(B, N, 1)} and metric ({B}, {N}, d) or keys "
                         f"({B}, H, {N}, d), got {tuple(size.shape)} and {tuple(metric.shape)}")  # fmt: skip
    na, nb = (N - prefix + 1) // 2, (N - prefix) // 2
    if not 0 <= r <= nb:
        raise ValueError(f"r={r}: merge at most {nb} of the {N - prefix} tokens after a prefix of {prefix}")
    if add is not None and (add.shape != x.shape or add.dtype != x.dtype):
        raise ValueError(f"add must match x {tuple(x.shape)} {x.dtype}, got {tuple(add.shape)} {add.dtype}")
    check_device(x.device)
    if {x.dtype, size.dtype, metric.dtype} - set(DTYPES):
        got = f"{x.dtype}, {size.dtype}, {metric.dtype}"
        raise ValueError(f"merge_triton sums in fp32: use tensors of {DTYPES}, got {got}; use 'matmul' for float64")
    split = B <= SPLIT_MAX_BATCH if split is None else split
    if split:
        best, partner = _scores(keys, N, prefix)
        a_row = kept = src = partner  # not read
    else:
        a_row, kept, src = _match(keys, N, prefix, r)
        best, partner = a_row, a_row  # not read
    out = torch.empty(B, N - r, C, dtype=x.dtype, device=x.device)
    out_size = torch.empty(B, N - r, 1, dtype=size.dtype, device=x.device)
    grid = (B, triton.cdiv(N - r, BLOCK_O), triton.cdiv(C, BLOCK_C))
    h = x if add is None else add  # not read without ADD
    _merge_kernel[grid](
        x,
        h,
        size,
        a_row,
        kept,
        src,
        best,
        partner,
        out,
        out_size,
        N,
        C,
        prefix,
        r,
        *x.stride(),
        *h.stride(),
        size.stride(0),
        size.stride(1),
        *out.stride(),
        out_size.stride(0),
        out_size.stride(1),
        BLOCK_A=_pow2(na),
        BLOCK_O=BLOCK_O,
        BLOCK_T=BLOCK_T,
        BLOCK_C=BLOCK_C,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        PLAN=split,
        ADD=add is not None,
        num_warps=MERGE_WARPS,
    )
    return out, out_size
