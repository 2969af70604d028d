"""The fused Triton merge step (otas.adapt.triton_merge) against the reference merge step and the matmul
merge in whole models, run on the CPU by Triton's interpreter; and how `merge_impl="triton"` is chosen.

The interpreter runs the kernels only when TRITON_INTERPRET=1 is set before triton is imported (torch
imports it), so `test_kernels_in_the_interpreter` runs this file again in a process started with it;
there the kernel tests run, here they are skipped. The interpreter cannot run a bfloat16 `tl.dot` (it
multiplies the raw bits; triton-lang/triton#11584), so half precision is checked here in float16, and
bfloat16 only on a GPU (the `gpu` tests).
"""

import re
import sys

import pytest
import torch

import otas.adapt
from otas.adapt.fast import FastConfig, FastForward
from otas.adapt.ops import check_merge_impl, merge_matmul, merge_ops, merge_scatter

from .conftest import small_model
from .interpreter import INTERPRETING, kernel_tests
from .test_reference import VARIANTS, _images, _model

MODULE = "otas.adapt.triton_merge"


interpreted, test_kernels_in_the_interpreter = kernel_tests(MODULE, __file__)


def _min_gap(metric: torch.Tensor) -> float:
    """The smallest score difference the matching of `metric` (B, n, d) decides on, in float64: each A
    token's best partner against its second best, and A tokens' best scores against each other."""
    m = metric.double() / metric.double().norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, Na, Nb)
    top = scores.topk(min(2, scores.shape[-1]), dim=-1).values
    gaps = [top[..., 0].sort(dim=-1).values.diff(dim=-1)]
    if top.shape[-1] == 2:
        gaps.append(top[..., 0] - top[..., 1])
    return min((g.min().item() for g in gaps if g.numel()), default=float("inf"))


def _inputs(B, N, C, d, prefix, seed, gap=1e-6, sizes=True):
    """Random tokens, sizes (1..4, as after earlier merges) and keys whose matching has no near-ties."""
    for s in range(seed, seed + 100):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(B, N, C, generator=g)
        size = torch.randint(1, 5, (B, N, 1), generator=g).float() if sizes else torch.ones(B, N, 1)
        metric = torch.randn(B, N, d, generator=g)
        if _min_gap(metric[:, prefix:]) > gap:
            return x, size, metric
    raise AssertionError("no input without near-ties found")


CASES = [  # B, N, C, d, r, prefix
    (1, 2, 4, 3, 1, 0),  # one A and one B token
    (2, 11, 8, 6, 0, 1),  # r = 0 still orders the kept A tokens by score
    (2, 11, 8, 6, 5, 1),  # r = max
    (2, 12, 8, 6, 5, 1),  # odd number after the prefix: one A token more than B
    (3, 16, 5, 4, 8, 0),  # no prefix, r = max
    (2, 15, 9, 17, 3, 5),  # five prefix tokens (class + 4 registers)
    (2, 20, 70, 24, 7, 5),  # channels over two blocks, r = max
    (2, 81, 40, 24, 20, 1),  # 40 A and B tokens: several score and one-hot tiles, output rows over 3 blocks
    (1, 150, 16, 64, 74, 1),  # 75 A tokens (a 128-row block), r = max
    (1, 150, 16, 64, 30, 0),
    (4, 65, 33, 8, 16, 1),  # the small model's shape
]


@pytest.mark.parametrize("split", [False, True], ids=["one-program-match", "split-match"])
@pytest.mark.parametrize("B,N,C,d,r,prefix", CASES)
def test_triton_merge_equals_scatter_merge(interpreted, B, N, C, d, r, prefix, split):
    """The same tokens land on the same rows with the same values (fp32 sums, so to float rounding)."""
    x, size, metric = _inputs(B, N, C, d, prefix, seed=N * 31 + r)
    want_x, want_size = merge_scatter(x, size, metric, r, prefix)
    got_x, got_size = interpreted.merge_triton(x, size, metric, r, prefix, split=split)
    assert got_x.shape == (B, N - r, C) and got_size.shape == (B, N - r, 1)
    torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)  # integer counts: exact
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [False, True], ids=["one-program-match", "split-match"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,N,C,d,r,prefix", [CASES[2], CASES[5], CASES[7], CASES[8]])
def test_fused_residual_add_equals_adding_first(interpreted, B, N, C, d, r, prefix, split, dtype):
    """merge(x, add=h) is merge(x + h) to the bit: the sum is rounded to x's dtype as `x + h` is, then
    merged the same way; `add` read through strides (a transposed copy)."""
    x, size, metric = _inputs(B, N, C, d, prefix, seed=N * 7 + r)
    h = torch.randn(B, N, C, generator=torch.Generator().manual_seed(r)).to(dtype)
    h_t = h.transpose(1, 2).contiguous().transpose(1, 2)
    x, size, metric = x.to(dtype), size.to(dtype), metric.to(dtype)
    want = interpreted.merge_triton(x + h, size, metric, r, prefix, split=split)
    got = interpreted.merge_triton(x, size, metric, r, prefix, split=split, add=h_t)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


def test_fused_residual_add_must_match_x(interpreted):
    x, size, metric = _inputs(1, 9, 4, 3, 1, seed=0)
    with pytest.raises(ValueError, match="add must match"):
        interpreted.merge_triton(x, size, metric, 2, 1, add=x[:, :-1])
    with pytest.raises(ValueError, match="add must match"):
        interpreted.merge_triton(x, size, metric, 2, 1, add=x.half())


def test_triton_merge_with_unit_sizes_and_strided_inputs(interpreted):
    """The first merge (every size 1) and inputs read through strides (a key slice, a transposed x)."""
    x, size, metric = _inputs(2, 33, 12, 20, 1, seed=5, sizes=False)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, C) with strides (N*C, 1, N)
    keys = torch.cat([metric, torch.randn_like(metric)], dim=-1)[..., :20]  # (B, N, d) with row stride 2d
    want = merge_scatter(x, size, metric, 12, 1)
    got = interpreted.merge_triton(x_t, size, keys, 12, 1)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("H,pad", [(1, 3), (3, 3), (3, 8)])  # pad 8: strides in whole vectors (VEC > 1)
def test_triton_merge_reads_keys_per_head(interpreted, H, pad):
    """Keys per head (B, H, N, d), read through the strides of a qkv output view, merge as their mean over
    heads does (the served path passes them so, with no reduction kernel before the merge)."""
    B, N, C, d, r, prefix = 2, 41, 12, 8, 15, 1
    x, size, _ = _inputs(B, N, C, d, prefix, seed=11)
    for s in range(100):
        qkv = torch.randn(B, N, 3, H, d + pad, generator=torch.Generator().manual_seed(s))  # padded heads
        keys = qkv.permute(2, 0, 3, 1, 4)[1][..., :d]  # (B, H, N, d), strided
        if _min_gap(keys.mean(1)[:, prefix:]) > 1e-6:
            break
    want_x, want_size = merge_scatter(x, size, keys.mean(1), r, prefix)
    got_x, got_size = interpreted.merge_triton(x, size, keys, r, prefix)
    torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)


def test_triton_merge_in_float16(interpreted):
    """Half precision (the kernel's tensor-core path; bfloat16 only runs on a GPU): within rounding."""
    x, size, metric = _inputs(2, 25, 24, 16, 1, seed=3, gap=2e-3)  # fp16 keys move scores by < 1e-3
    x, size, metric = x.half(), size.half(), metric.half()
    want_x, want_size = merge_scatter(x.float(), size.float(), metric.float(), 9, 1)
    got_x, got_size = interpreted.merge_triton(x, size, metric, 9, 1)
    assert got_x.dtype == got_size.dtype == torch.float16
    torch.testing.assert_close(got_size.float(), want_size, rtol=0, atol=0)
    torch.testing.assert_close(got_x.float(), want_x, rtol=2e-3, atol=2e-3)


# 81: B tokens over two score tiles; 150: 74 A tokens into one B row, over three one-hot tiles;
# 300: 149 B tokens, over three tiles of the split match too, and 150 A tokens, a 256-row block
@pytest.mark.parametrize("split", [False, True], ids=["one-program-match", "split-match"])
@pytest.mark.parametrize("N,r", [(13, 4), (81, 30), (150, 74), (300, 100)])
def test_triton_merge_breaks_ties_by_index(interpreted, N, r, split):
    """All scores equal: every A token picks the first B token, and A tokens rank in index order, so the
    first r merge into B token 0 and the rest stay in their order (the reference's argsort may differ)."""
    B, C, prefix = 2, 6, 1
    g = torch.Generator().manual_seed(0)
    x, size = torch.randn(B, N, C, generator=g), torch.randint(1, 5, (B, N, 1), generator=g).float()
    got_x, got_size = interpreted.merge_triton(x, size, torch.ones(B, N, 8), r, prefix, split=split)
    a, b = slice(prefix, None, 2), slice(prefix + 1, None, 2)
    xa, sa, xb, sb = x[:, a], size[:, a], x[:, b].clone(), size[:, b].clone()
    xb[:, 0] = (xb[:, 0] * sb[:, 0] + (xa[:, :r] * sa[:, :r]).sum(1)) / (sb[:, 0] + sa[:, :r].sum(1))
    sb[:, 0] += sa[:, :r].sum(1)
    torch.testing.assert_close(got_x, torch.cat([x[:, :prefix], xa[:, r:], xb], 1))
    torch.testing.assert_close(got_size, torch.cat([size[:, :prefix], sa[:, r:], sb], 1))


@pytest.mark.parametrize("split", [False, True], ids=["one-program-match", "split-match"])
def test_triton_merge_with_a_zero_key_keeps_every_token(interpreted, split):
    """Zero keys (cosine scores NaN, counted as -inf) on either side: every token still lands in exactly
    one output row, so the sizes add up to the input's and every kept row is filled; both matches agree."""
    x, size, metric = _inputs(2, 33, 8, 12, 1, seed=9)
    metric[:, 1] = 0.0  # the first A token's key
    metric[1, 5] = 0.0  # another A token's
    metric[0, 2] = 0.0  # a B token's
    got_x, got_size = interpreted.merge_triton(x, size, metric, 10, 1, split=split)
    torch.testing.assert_close(got_size.sum(1), size.sum(1))
    assert torch.isfinite(got_x).all() and (got_size >= 1).all()
    other = interpreted.merge_triton(x, size, metric, 10, 1, split=not split)
    torch.testing.assert_close(got_x, other[0], rtol=0, atol=0)


MATCH_CASES = [  # B, H, N, d, r, prefix
    (1, 1, 2, 16, 1, 0),  # one A and one B token
    (3, 3, 40, 16, 0, 1),  # r = 0: the ranks alone
    (2, 3, 41, 64, 20, 1),  # r = max, 20 A tokens: two programs of the split match
    (2, 4, 38, 16, 9, 5),  # five prefix tokens
    (2, 1, 150, 64, 60, 1),  # 74 B tokens: two score tiles of the split match
    (5, 2, 65, 16, 16, 1),  # the small model's shape
]


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("B,H,N,d,r,prefix", MATCH_CASES)
def test_split_match_equals_one_program_match(interpreted, B, H, N, d, r, prefix, ties):
    """`_score_kernel` + `_merge_kernel` planning for itself merge exactly as `_match_kernel` + `_merge_kernel`
    reading its plan, bit for bit: also where scores tie, between the partners of one A token and between the
    best scores of A tokens. With `ties`, the keys have ±1 entries in 16 or 64 dimensions (every head alike:
    their sum has entries ±H and the norm H·sqrt(d), both exact), so every cosine score is a multiple of 2/d,
    exact in any order of summation, and many are equal."""
    g = torch.Generator().manual_seed(B * N + r)
    x, size = torch.randn(B, N, 6, generator=g), torch.randint(1, 5, (B, N, 1), generator=g).float()
    if ties:
        keys = (torch.randint(0, 2, (B, 1, N, d), generator=g) * 2 - 1).float().expand(B, H, N, d)
    else:
        keys = torch.randn(B, N, H, d + 3, generator=g).transpose(1, 2)[..., :d]  # strided, as a qkv view
    one = interpreted.merge_triton(x, size, keys, r, prefix, split=False)
    split = interpreted.merge_triton(x, size, keys, r, prefix, split=True)
    assert torch.equal(split[0], one[0]) and torch.equal(split[1], one[1])
    torch.testing.assert_close(one[1].sum(1), size.sum(1), rtol=0, atol=0)  # every token in one row
    if not ties:
        want = merge_scatter(x, size, keys.mean(1), r, prefix)
        torch.testing.assert_close(one[0], want[0], rtol=1e-5, atol=1e-5)


def test_triton_merge_splits_the_match_at_small_batches(interpreted, monkeypatch):
    """split=None: the split match at batches up to SPLIT_MAX_BATCH, the one-program match above."""
    calls = []
    scores, match = interpreted._scores, interpreted._match
    monkeypatch.setattr(interpreted, "_scores", lambda *a: calls.append("split") or scores(*a))
    monkeypatch.setattr(interpreted, "_match", lambda *a: calls.append("one") or match(*a))
    monkeypatch.setattr(interpreted, "SPLIT_MAX_BATCH", 2)
    for B in (1, 2, 3):
        x, size, metric = _inputs(B, 9, 4, 3, 1, seed=B)
        interpreted.merge_triton(x, size, metric, 2, 1)
    assert calls == ["split", "split", "one"]


def test_triton_merge_checks_its_arguments(interpreted):
    x, size, metric = torch.randn(1, 9, 4), torch.ones(1, 9, 1), torch.randn(1, 9, 3)
    with pytest.raises(ValueError, match="r=5: merge at most 4"):
        interpreted.merge_triton(x, size, metric, 5, 0)
    with pytest.raises(ValueError, match="size must be"):
        interpreted.merge_triton(x, torch.ones(1, 8, 1), metric, 2, 0)
    with pytest.raises(ValueError, match="keys"):
        interpreted.merge_triton(x, size, torch.randn(1, 2, 8, 3), 2, 0)  # keys of 8 tokens, not 9
    with pytest.raises(ValueError, match="sums in fp32"):
        interpreted.merge_triton(x.double(), size.double(), metric.double(), 2, 0)


# -- whole models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_triton_column_equals_matmul_column_in_the_model(interpreted, variant, monkeypatch):
    """Every prefix and pooling, r capped in the last block (-14): the logits of "triton+column" equal
    those of "matmul+column" in float32. The split match at γ = -14, the one-program match at -8 (both
    at every γ would only repeat `test_split_match_equals_one_program_match`, slowly)."""
    model, x = _model(variant).float(), _images().float()
    idx = torch.zeros(len(x), dtype=torch.long)
    want_ops, got_ops = merge_ops("matmul+column", model.vit), merge_ops("triton+column", model.vit)
    for gamma, split_max in ((-14, len(x)), (-8, 0)):
        monkeypatch.setattr(interpreted, "SPLIT_MAX_BATCH", split_max)
        want = model.forward_indexed(x, gamma, idx, want_ops)
        torch.testing.assert_close(model.forward_indexed(x, gamma, idx, got_ops), want, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_fast_forward_serves_triton(interpreted):
    """The served path (FastForward, eager, fp32) at every γ and a task mix, against "matmul+column"."""
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    ref = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32, merge_impl="matmul+column"))
    fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32, merge_impl="triton+column"))
    for g in ref.model.config.gammas:
        torch.testing.assert_close(fast(images, g, ["a", "b", "a"]), ref(images, g, ["a", "b", "a"]))


# -- choosing it -----------------------------------------------------------------------------------------
def test_triton_merge_impl_names():
    for ok in ("triton", "triton+column", "column+triton"):
        assert check_merge_impl(ok) == ok
    for bad in ("triton+matmul", "triton+compile", "column+triton+compile", "matmul+column+triton"):
        with pytest.raises(ValueError, match=re.escape(f"merge_impl='{bad}'") + ".*cannot be combined"):
            check_merge_impl(bad)
    with pytest.raises(ValueError, match="cannot be combined"):
        FastConfig(merge_impl="triton+matmul")


@pytest.mark.skipif(INTERPRETING, reason="the interpreter runs CPU tensors")
def test_triton_needs_cuda_on_a_cpu():
    """A clear error when the model is built, not a crash inside Triton at the first merge."""
    tm = pytest.importorskip(MODULE)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        merge_ops("triton+column", small_model().vit)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FastForward(small_model(), "cpu", FastConfig(mode="eager", merge_impl="triton"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        tm.merge_triton(torch.randn(1, 9, 4), torch.ones(1, 9, 1), torch.randn(1, 9, 3), 2, 0)


def test_triton_needs_the_triton_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.delattr(otas.adapt, "triton_merge", raising=False)
    with pytest.raises(ValueError, match="needs the triton package"):
        merge_ops("triton", small_model().vit)


# -- on a GPU ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("split", [False, True], ids=["one-program-match", "split-match"])
@pytest.mark.parametrize(
    "B,N,C,d,r,prefix",
    [(8, 257, 192, 64, 48, 1), (4, 197, 768, 64, 16, 1), (2, 30, 70, 17, 12, 5), (1, 300, 64, 64, 100, 1)],
)
def test_gpu_triton_merge(B, N, C, d, r, prefix, split):
    """The compiled kernels in fp32 equal the reference, and a CUDA graph replays them."""
    from otas.adapt.triton_merge import merge_triton

    x, size, metric = (t.cuda() for t in _inputs(B, N, C, d, prefix, seed=N))
    want_x, want_size = merge_scatter(x, size, metric, r, prefix)
    got_x, got_size = merge_triton(x, size, metric, r, prefix, split=split)
    torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = merge_triton(x, size, metric, r, prefix, split=split)
    x.mul_(2)
    graph.replay()
    torch.testing.assert_close(captured[0], merge_scatter(x, size, metric, r, prefix)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("N,r,prefix", [(12, 3, 1), (13, 6, 1), (15, 2, 5)])
def test_gpu_triton_merge_in_bfloat16(N, r, prefix):
    """bf16 (the served dtype) within rounding of the fp32 reference and of the matmul merge, on keys far
    enough from ties that bf16 scores (~4e-3 apart) choose the same tokens."""
    from otas.adapt.triton_merge import merge_triton

    x, size, metric = (t.cuda() for t in _inputs(2, N, 70, 32, prefix, seed=N, gap=1e-2))
    want_x, want_size = merge_scatter(x, size, metric, r, prefix)
    half = x.bfloat16(), size.bfloat16(), metric.bfloat16()
    got_x, got_size = merge_triton(*half, r, prefix)
    torch.testing.assert_close(got_size.float(), want_size, rtol=0, atol=0)
    torch.testing.assert_close(got_x.float(), want_x, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_x, merge_matmul(*half, r, prefix)[0], rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("B,N,H,hd,r", [(8, 257, 3, 64, 48), (1, 257, 3, 64, 16), (8, 197, 12, 64, 16)])
def test_gpu_split_match_in_bfloat16(B, N, H, hd, r):
    """The served case (bf16 keys as a view of the padded qkv output, many heads): the split match merges
    as the one-program match does, on keys far enough from ties that the two score tilings agree."""
    from otas.adapt.triton_merge import merge_triton

    for s in range(100):
        qkv = torch.randn(B, N, 3, H, hd + 8, generator=torch.Generator().manual_seed(s)).bfloat16()
        keys = qkv.permute(2, 0, 3, 1, 4)[1][..., :hd]  # (B, H, N, hd), strided
        if _min_gap(keys.float().mean(1)[:, 1:]) > 1e-3:
            break
    x, size = torch.randn(B, N, 192).bfloat16().cuda(), torch.randint(1, 5, (B, N, 1)).bfloat16().cuda()
    one = merge_triton(x, size, keys.cuda(), r, 1, split=False)
    split = merge_triton(x, size, keys.cuda(), r, 1, split=True)
    assert torch.equal(split[0], one[0]) and torch.equal(split[1], one[1])
