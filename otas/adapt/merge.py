"""Token merging (ToMe): bipartite soft matching and size-weighted averaging, as pure functions.

Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023). Tokens are split alternately into
two sets A and B; every token of A is matched to its most similar token of B (cosine similarity of
the attention keys); the r most similar pairs are merged by a size-weighted average, so a merged
token keeps the total `size` (number of original patches) it stands for.

Protected tokens (class, register, prompt tokens) are never passed to these functions: the caller
slices them off, so they are neither merged nor merge destinations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Merge = Callable[[torch.Tensor], torch.Tensor]


def merge_schedule(num_tokens: int, r: int, depth: int, protected: int, every: int = 1) -> list[int]:
    """Tokens merged in each of `depth` blocks when asking for `r` per block.

    `every` = k merges only in blocks 0, k, 2k, ..., each taking the r of its k blocks at once
    (k·r, or fewer in a last, shorter group), so the merge steps are fewer and larger. k is the
    most blocks a step covers: where k·r tokens cannot merge in the first block, the largest k
    that can is used (`steps_of`). At most half of the mergeable tokens can be merged in one
    block (each merge needs one token of A and a distinct destination in B), so r is capped where
    too few tokens remain. Raises ValueError when even the first block cannot merge r: that γ is
    impossible for this sequence length.
    """
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    if every < 1:
        raise ValueError(f"every must be >= 1 (merge in every k-th block), got {every}")
    first = (num_tokens - protected) // 2  # the most one block can merge
    if r > first:
        raise ValueError(
            f"cannot merge r={r} tokens per block: only {num_tokens - protected} mergeable tokens ({num_tokens} "
            f"minus {protected} protected) enter the first block, so at most {first} at once; use a smaller |gamma|"
        )
    every = steps_of(num_tokens, r, depth, protected, every)
    schedule, n = [], num_tokens
    for i in range(depth):
        r_l = min(r * min(every, depth - i), (n - protected) // 2) if i % every == 0 else 0
        schedule.append(r_l)
        n -= r_l
    return schedule


def steps_of(num_tokens: int, r: int, depth: int, protected: int, every: int) -> int:
    """The blocks one merge step covers at r per block, given at most `every`: the largest k ≤ every
    whose k·r tokens the first block can merge."""
    first = (num_tokens - protected) // 2
    k = min(every, depth)
    while k > 1 and r * k > first:
        k -= 1
    return k


def match(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite matching of `metric` (B, N, C): A = even tokens, B = odd ones.

    Returns `order` (B, Na), the A tokens by descending similarity to their best partner (the first
    r are merged away, the rest kept in this order), and `partner` (B, Na), each A token's most
    similar B token. Every merge implementation plans with this one function, so they merge the
    same tokens.
    """
    n = metric.shape[1]
    assert 0 <= r <= n // 2, f"r={r} out of range for {n} tokens"
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
        node_max, partner = scores.max(dim=-1)  # (B, Na): best partner in B for each A token
        order = node_max.argsort(dim=-1, descending=True)  # (B, Na)
    return order, partner


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """Plan the merge of r tokens from `metric` (B, N, C); returns a function applying it.

    The returned `merge(x)` maps (B, N, D) -> (B, N - r, D), summing each merged source into its
    destination; unmerged A tokens come first, then the B tokens.
    """
    order, partner = match(metric, r)
    src_idx = order[:, :r, None]  # (B, r, 1): the r A tokens merged away
    unm_idx = order[:, r:, None]  # (B, Na - r, 1): A tokens kept
    dst_idx = partner[..., None].gather(1, src_idx)  # (B, r, 1): their destinations in B

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]  # (B, Na, D), (B, Nb, D)
        d = x.shape[-1]
        unm = src.gather(1, unm_idx.expand(-1, -1, d))
        moved = src.gather(1, src_idx.expand(-1, -1, d))
        dst = dst.scatter_reduce(1, dst_idx.expand(-1, -1, d), moved, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge. x (B, N, D), size (B, N, 1) -> (B, N - r, D), (B, N - r, 1)."""
    x = merge(x * size)
    size = merge(size)
    return x / size, size


def merge_matrix(metric: torch.Tensor, r: int, prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """The merge of `bipartite_soft_matching` as a one-hot assignment M (B, N - r, N): M[b, i, j] = 1 where
    token j lands on row i.

    `metric` (B, N, C) covers the whole sequence; the first `prefix` tokens keep their rows and are
    neither merged nor destinations. Rows follow the reference layout: prefix, kept A tokens (most
    similar first), then B tokens, each merged A token adding to its partner's row. Built with a
    few scatters and fills, no per-token index arithmetic (each op is a kernel launch on a GPU).
    """
    B, N, _ = metric.shape
    order, partner = match(metric[:, prefix:], r)  # (B, Na) each
    Na = order.shape[1]
    dst0 = prefix + Na - r  # row of the first B token
    with torch.no_grad():
        # OPTIMIZATION: rows padded to a multiple of 8 elements, so cuBLAS gets 16-byte aligned rows
        M = torch.zeros(B, N - r, -(-N // 8) * 8, dtype=dtype, device=metric.device)[..., :N]
        M[:, :prefix, :prefix].diagonal(dim1=1, dim2=2).fill_(1)  # prefix tokens stay
        M[:, dst0:, prefix + 1 :: 2].diagonal(dim1=1, dim2=2).fill_(1)  # B token j -> row dst0 + j
        # explicit `one` sources: a scalar value is traced by torch.compile with a dtype other than M's
        one = torch.ones((), dtype=dtype, device=metric.device)
        kept = order[:, r:, None]  # (B, Na - r, 1)
        # kept A token of rank k -> row prefix + k
        M[:, prefix:dst0, prefix::2].scatter_(2, kept, one.expand(kept.shape))
        src = order[:, None, :r]  # (B, 1, r)
        merged = torch.zeros(B, 1, Na, dtype=dtype, device=metric.device).scatter_(2, src, one.expand(src.shape))
        M[:, dst0:, prefix::2].scatter_(1, partner[:, None, :], merged)  # merged A token -> its partner's row
    return M


def merge_wavg_matmul(x: torch.Tensor, size: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge without atomics: x (B, N, D), size (B, N, 1), M (B, N', N) from
    `merge_matrix` -> (B, N', D), (B, N', 1).

    Each column of M holds a single 1 (where its token goes), so M @ (x * size) sums every merged
    group in one batched matmul (fp32 accumulation) and M @ size adds up the sizes.
    """
    new_size = M @ size  # (B, N', 1)
    return (M @ (x * size)) / new_size, new_size
