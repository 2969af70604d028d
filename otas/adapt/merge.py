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


def merge_schedule(num_tokens: int, r: int, depth: int, protected: int) -> list[int]:
    """Tokens merged in each of `depth` blocks when asking for `r` per block.

    At most half of the mergeable tokens can be merged in one block (each merge needs one token of
    A and a distinct destination in B), so r is capped where too few tokens remain. Raises
    ValueError when even the first block cannot merge r tokens: that γ is impossible for this
    sequence length.
    """
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    first = (num_tokens - protected) // 2
    if r > first:
        raise ValueError(
            f"cannot merge r={r} tokens per block: only {num_tokens - protected} mergeable tokens "
            f"({num_tokens} minus {protected} protected) enter the first block, so at most r={first}; "
            f"use a smaller |gamma|"
        )
    schedule, n = [], num_tokens
    for _ in range(depth):
        r_l = min(r, (n - protected) // 2)
        schedule.append(r_l)
        n -= r_l
    return schedule


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """Plan the merge of r tokens from `metric` (B, N, C); returns a function applying it.

    The returned `merge(x)` maps (B, N, D) -> (B, N - r, D), summing each merged source into its
    destination; unmerged A tokens come first, then the B tokens.
    """
    n = metric.shape[1]
    assert 0 <= r <= n // 2, f"r={r} out of range for {n} tokens"
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
        node_max, node_idx = scores.max(dim=-1)  # (B, Na): best partner in B for each A token
        order = node_max.argsort(dim=-1, descending=True)[..., None]  # (B, Na, 1)
        src_idx = order[:, :r]  # (B, r, 1): the r A tokens merged away
        unm_idx = order[:, r:]  # (B, Na - r, 1): A tokens kept
        dst_idx = node_idx[..., None].gather(1, src_idx)  # (B, r, 1): their destinations in B

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
