"""How a merged block attends and merges: the reference ops, the fast ones, and the cost floor.

`AdaptiveViT._blocks_merged` runs the same loop for all of them (attention, residual, merge, MLP);
an ops object only supplies the two steps that merging changes. The implementations compute the
same function, up to how exact ties break (tests/adapt/test_fast_merge.py and test_triton_merge.py check
them against the reference and an independent float64 ToMe), so picking one is a speed choice, named by
`FastConfig.merge_impl`:

- "reference": `merge.py` (gathers and a scatter-add) and log(size) as an additive SDPA mask.
- options joined by "+", any of:
  "matmul"  - merge by a one-hot assignment matmul (`merge_wavg_matmul`): no atomics, no concatenation;
  "column"  - log(size) as an extra head-dim column of q·k (`attention_size_column`): no mask, so the
              mask-free fused kernels (flash) run proportional attention;
  "compile" - the merge step (matching + merge) through `torch.compile(dynamic=True)`: fewer kernels;
  "triton"  - the merge step as two fused Triton kernels (`triton_merge.py`, CUDA only); a merge of its
              own, so it combines with "column" or "bias" only;
  "bias"    - proportional attention as one Triton flash kernel with log(size) as a per-key bias
              (`triton_attention.py`, CUDA only): the model's own head dim, no padded weights; an
              attention of its own, so not with "column".
- "limit": not a merge. Drops the last tokens instead, with timm's own attention: the cost of the
  merged token counts with no merge work, the floor a benchmark compares against. Wrong answers.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from otas.adapt.attention import attention_size_column, attention_with_keys, column_weights, supports_size_column
from otas.adapt.merge import bipartite_soft_matching, merge_matrix, merge_wavg, merge_wavg_matmul

OPTIONS = ("matmul", "column", "compile", "triton", "bias")
EXCLUSIVE = {"triton": ("matmul", "compile"), "bias": ("column",)}
"""Options that replace the merge function or the attention, with the options that act on what they replace."""


class MergeOps(Protocol):
    def attention(
        self, i: int, attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block i's attention: x (B, N, C), size (B, N, 1) or None (no proportional attention) ->
        output (B, N, C), matching metric (B, N, d) (or, for a merge that averages them itself, the
        keys per head (B, H, N, d))."""
        ...

    def merge(
        self,
        x: torch.Tensor,
        size: torch.Tensor,
        metric: torch.Tensor | None,
        r: int,
        prefix: int,
        add: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge r of the tokens of x + add (the residual stream and the attention's output, added in x's
        dtype; `add` None: x alone) after the first `prefix`: (B, N, C), (B, N, 1) -> (B, N - r, ...)."""
        ...


def merge_scatter(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference merge step: protected prefix sliced off, `merge.py`, prefix put back."""
    merge = bipartite_soft_matching(metric[:, prefix:], r)
    rest, rest_size = merge_wavg(merge, x[:, prefix:], size[:, prefix:])
    return torch.cat([x[:, :prefix], rest], 1), torch.cat([size[:, :prefix], rest_size], 1)


def merge_matmul(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same merge step as one assignment matmul over the whole sequence (prefix rows map to themselves)."""
    return merge_wavg_matmul(x, size, merge_matrix(metric, r, prefix, x.dtype))


class ReferenceOps:
    def attention(self, i, attn, x, size):
        return attention_with_keys(attn, x, size)

    def merge(self, x, size, metric, r, prefix, add=None):
        return merge_scatter(x if add is None else x + add, size, metric, r, prefix)


REFERENCE = ReferenceOps()

_COMPILED: dict[tuple[str, str], object] = {}  # one compiled merge per (function, backend), shared by all models


def _compiled(fn, backend: str):
    if (fn.__name__, backend) not in _COMPILED:
        _COMPILED[fn.__name__, backend] = torch.compile(fn, dynamic=True, fullgraph=True, backend=backend)
    return _COMPILED[fn.__name__, backend]


class FastOps:
    """The reference with the chosen `OPTIONS`; padded attention weights are made once, here.

    Build it after the model has its final device and dtype: the padded weights are copies, made
    for a frozen backbone (inference only).
    """

    def __init__(self, vit: nn.Module, options: set[str], compile_backend: str = "inductor"):
        self.options = set(options)
        self._mean_keys = "triton" not in options
        self._fuses_add = "triton" in options
        if "triton" in options:
            self._merge = _triton_merge(next(vit.parameters()).device)
        else:
            fn = merge_matmul if "matmul" in options else merge_scatter
            self._merge = _compiled(fn, compile_backend) if "compile" in options else fn
        self._columns = None
        self._bias = None
        if "bias" in options:
            kernels = triton_kernels(
                "triton_attention", next(vit.parameters()).device, "merge_impl option 'bias'", "use 'column'"
            )
            self._bias = [kernels.attention_bias if supports_size_column(b.attn) else None for b in vit.blocks]
        if "column" in options:
            self._columns = [column_weights(b.attn) if supports_size_column(b.attn) else None for b in vit.blocks]

    def attention(self, i, attn, x, size):
        mean = self._mean_keys  # the triton merge sums the keys over heads itself: no reduction kernel here
        if size is not None and self._bias is not None and self._bias[i] is not None:
            out, keys = self._bias[i](attn, x, size)  # keys per head (B, H, N, hd)
            return out, keys if not mean else keys.mean(dim=1)
        if size is None or self._columns is None or self._columns[i] is None:
            return attention_with_keys(attn, x, size, mean)
        return attention_size_column(attn, self._columns[i], x, size, mean)

    def merge(self, x, size, metric, r, prefix, add=None):
        if self._fuses_add:  # the kernel adds as it reads: x + add is never written out
            return self._merge(x, size, metric, r, prefix, add=add)
        return self._merge(x if add is None else x + add, size, metric, r, prefix)


def triton_kernels(module: str, device: torch.device | str, what: str, instead: str):
    """`otas.adapt.<module>`, a module of Triton kernels, imported only when asked for (triton is a GPU
    dependency) and checked for `device`; a clear ValueError naming `what` and what to do `instead`."""
    import importlib

    try:
        kernels = importlib.import_module(f"otas.adapt.{module}")
    except ImportError as e:
        raise ValueError(f"{what} needs the triton package ({e}); {instead}") from e
    kernels.check_device(device, what, instead)
    return kernels


def _triton_merge(device: torch.device):
    """`merge_triton`, checked for `device`."""
    return triton_kernels("triton_merge", device, "merge_impl 'triton'", "use 'matmul' (or 'reference')").merge_triton


class LimitOps:
    """The cost floor: timm's attention (no bias, no keys) and the last r tokens dropped, not merged."""

    def attention(self, i, attn, x, size):
        return attn(x), None

    def merge(self, x, size, metric, r, prefix, add=None):
        n = x.shape[1] - r
        x = x if add is None else x + add
        return x[:, :n], size[:, :n]


def check_merge_impl(name: str) -> str:
    """Validate a `merge_impl` name ("reference", "limit", or OPTIONS joined by "+", respecting
    `EXCLUSIVE`); returns it."""
    if name in ("reference", "limit"):
        return name
    parts = name.split("+")
    if not name or len(set(parts)) != len(parts) or not set(parts) <= set(OPTIONS):
        raise ValueError(
            f"merge_impl={name!r}: use 'reference', 'limit' (bench only), or any of {list(OPTIONS)} joined by '+', "
            f"e.g. 'matmul+column'"
        )
    for option, others in EXCLUSIVE.items():
        if option in parts and set(others) & set(parts):
            raise ValueError(
                f"merge_impl={name!r}: {option!r} replaces what {sorted(set(others) & set(parts))} act on, so it "
                f"cannot be combined with them, e.g. use 'triton+column' or 'triton+bias'"
            )
    return name


def merge_ops(name: str, vit: nn.Module, compile_backend: str = "inductor") -> MergeOps:
    """The ops for a `merge_impl` name, for `vit` as it is now (device, dtype)."""
    name = check_merge_impl(name)
    if name == "reference":
        return REFERENCE
    if name == "limit":
        return LimitOps()
    return FastOps(vit, set(name.split("+")), compile_backend)
