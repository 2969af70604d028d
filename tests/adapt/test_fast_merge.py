"""The fast merge implementations (otas.adapt.ops) against the reference functions and the independent
float64 ToMe of test_reference.py: same tokens merged, same values to rounding, every prefix and pooling."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import Attention

from otas.adapt import SOURCE, MergeCapWarning
from otas.adapt.attention import (
    attention_reference,
    attention_size_column,
    attention_with_keys,
    column_weights,
    supports_size_column,
)
from otas.adapt.fast import FastConfig, FastForward
from otas.adapt.ops import LimitOps, check_merge_impl, merge_matmul, merge_ops, merge_scatter
from otas.data.transforms import normalize, to_float
from otas.models.checkpoint import load_checkpoint
from otas.models.registry import build_vit
from otas.predict import default_model_path, sample_dir

from .conftest import small_model
from .test_reference import GAMMAS, VARIANTS, _images, _model, ref_merged

IMPLS = ["matmul", "column", "matmul+column"]
COMPILED = [("compile", "class_token"), ("compile", "avg_registers"), ("matmul+column+compile", "registers")]


def _ops(name: str, vit):
    return merge_ops(name, vit, compile_backend="aot_eager")  # traced as on the GPU, run by eager kernels on a CPU


# -- the merge step ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 3),
    n=st.integers(2, 41),
    prefix=st.integers(0, 5),
    D=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_matmul_merge_equals_scatter_merge(B, n, prefix, D, dtype, data):
    """Random tokens, sizes and keys, any r: the same tokens land on the same rows with the same values."""
    r = data.draw(st.integers(1, n // 2))
    g = torch.Generator().manual_seed(n * 97 + prefix * 13 + D)
    N = prefix + n
    x = torch.randn(B, N, D, generator=g, dtype=dtype)
    size = torch.randint(1, 5, (B, N, 1), generator=g).to(dtype)
    metric = torch.randn(B, N, 6, generator=g, dtype=dtype)
    want_x, want_size = merge_scatter(x, size, metric, r, prefix)
    got_x, got_size = merge_matmul(x, size, metric, r, prefix)
    assert got_x.shape == (B, N - r, D) and got_size.shape == (B, N - r, 1)
    torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)  # integer counts: exact
    torch.testing.assert_close(got_x, want_x)


def test_matmul_merge_in_bf16_is_within_rounding():
    """bf16 (the GPU's dtype): fp32 accumulation in the matmul vs bf16 sums in the scatter differ by rounding only."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 97, 64, generator=g)
    size = torch.randint(1, 6, (4, 97, 1), generator=g).float()
    metric = torch.randn(4, 97, 16, generator=g)
    want, want_size = merge_scatter(x, size, metric, 30, 1)  # fp32 reference
    got, got_size = merge_matmul(x.bfloat16(), size.bfloat16(), metric, 30, 1)
    torch.testing.assert_close(got_size.float(), want_size, rtol=0, atol=0)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


# -- proportional attention as a head-dim column ------------------------------------------------------------
@pytest.mark.parametrize("dim,heads,bias", [(192, 3, True), (96, 2, False), (16, 2, True), (40, 5, True)])
@torch.no_grad()
def test_size_column_equals_additive_mask(dim, heads, bias):
    torch.manual_seed(dim)
    attn = Attention(dim, heads, qkv_bias=bias).double().eval()
    torch.nn.init.normal_(attn.qkv.bias, std=0.5) if bias else None
    x = torch.randn(3, 29, dim, dtype=torch.float64)
    size = torch.randint(1, 9, (3, 29, 1)).double()
    cw = column_weights(attn)
    assert cw.hp % 8 == 0 and cw.hp > attn.head_dim
    out, keys = attention_size_column(attn, cw, x, size)
    want, want_keys = attention_with_keys(attn, x, size)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(out, attention_reference(attn, x, size))
    torch.testing.assert_close(keys, want_keys)


def test_size_column_needs_plain_heads():
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=2, qk_norm=True)
    assert not supports_size_column(vit.blocks[0].attn)  # q/k LayerNorms act on the head dim: keep the mask
    assert supports_size_column(build_vit("vit_tiny_p2", 5, img_size=16, depth=2).blocks[0].attn)


# -- whole models against the independent reference -------------------------------------------------------
@pytest.mark.parametrize(
    "impl,variant",
    [(i, v) for i in IMPLS for v in VARIANTS] + COMPILED,  # compiled: a few, compiling is slow
)
@torch.no_grad()
def test_fast_impls_match_reference_model(variant, impl):
    model, x = _model(variant), _images()
    ops = _ops(impl, model.vit)
    idx = torch.zeros(len(x), dtype=torch.long)
    embedded = model.vit.norm_pre(model.vit._pos_embed(model.vit.patch_embed(x)))
    for gamma in [g for g in GAMMAS if g < 0]:
        feats, tokens, sizes = ref_merged(model, x, gamma)
        torch.testing.assert_close(model.forward_indexed(x, gamma, idx, ops), model.vit.head(feats))
        out, size = model._blocks_merged(embedded, -gamma, ops)
        torch.testing.assert_close(out, tokens[-1])
        torch.testing.assert_close(size[..., 0], sizes[-1])


@torch.no_grad()
def test_fast_impls_match_reference_on_the_shipped_model(task="blur"):
    """Trained weights, real images (the shipped sample), float64: the same merges, the same outputs.

    In float32 a few images differ visibly: where two pairs are equally similar up to rounding, the
    order of additions decides which one merges. float64 leaves no such near-ties at these sizes."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeCapWarning)
        model = load_checkpoint(default_model_path(), dtype=torch.float64)
    files = sorted((sample_dir() / task).glob("*/*.png"))[::4]  # 10 images over the 5 classes
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    x = normalize(to_float(images), model.preprocess).double()
    idx = torch.full((len(x),), model.tasks.index(task))
    for gamma in (-48, -20):
        want = model.forward_indexed(x, gamma, idx)
        for impl in ("matmul", "column", "matmul+column"):
            got = model.forward_indexed(x, gamma, idx, _ops(impl, model.vit))
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m, i=impl: f"{i}: {m}")


@pytest.mark.parametrize("impl", ["matmul", "matmul+column+compile"])
@torch.no_grad()
def test_fast_impls_match_reference_every_other_block(impl):
    model, x = _model("registers", merge_every=2), _images()
    idx = torch.zeros(len(x), dtype=torch.long)
    for gamma in (-14, -8):
        feats, _, _ = ref_merged(model, x, gamma)
        torch.testing.assert_close(model.forward_indexed(x, gamma, idx, _ops(impl, model.vit)), model.vit.head(feats))


@pytest.mark.parametrize("impl", ["matmul", "matmul+column", "compile"])
@torch.no_grad()
def test_fast_impls_without_proportional_attention(impl):
    model, x = _model("avg_registers"), _images()
    model.config.proportional_attn = False
    idx = torch.zeros(len(x), dtype=torch.long)
    for gamma in (-14, -8):
        want = model.forward_indexed(x, gamma, idx)
        torch.testing.assert_close(model.forward_indexed(x, gamma, idx, _ops(impl, model.vit)), want)


@torch.no_grad()
def test_fast_forward_serves_every_impl_alike():
    """The served path (FastForward, eager on a CPU, fp32) at every γ and a task mix, per merge_impl."""
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    ref = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32))
    for impl in ("matmul+column", "column"):
        fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32, merge_impl=impl))
        for g in ref.model.config.gammas:
            torch.testing.assert_close(fast(images, g, ["a", "b", "a"]), ref(images, g, ["a", "b", "a"]))


# -- the benchmark floor and the knob -------------------------------------------------------------------
@torch.no_grad()
def test_limit_runs_the_merged_token_counts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeCapWarning)
        model = small_model(gammas=(-14, -8, 0))
    seen = []
    hooks = [b.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in model.vit.blocks]
    hooks.append(model.vit.norm.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])))
    x = torch.randn(2, 3, 16, 16)
    for gamma in (-14, -8):
        seen.clear()
        out = model.forward_indexed(x, gamma, torch.zeros(2, dtype=torch.long), LimitOps())
        assert seen == model.token_counts(gamma) and out.isfinite().all()
    for h in hooks:
        h.remove()


def test_merge_impl_names():
    for ok in ("reference", "limit", "matmul", "column+matmul", "matmul+column+compile"):
        assert check_merge_impl(ok) == ok
    for bad in ("", "fast", "matmul+matmul", "matmul+"):
        with pytest.raises(ValueError, match="merge_impl="):
            check_merge_impl(bad)
    with pytest.raises(ValueError, match="merge_impl='turbo'"):
        FastConfig(merge_impl="turbo")
    assert FastForward(small_model(), "cpu", FastConfig(mode="eager")).ops is merge_ops("reference", None)


def test_source_task_shapes_with_fast_impl():
    model = small_model()
    ops = _ops("matmul+column", model.vit)
    with torch.no_grad():
        out = model.forward_indexed(torch.randn(2, 3, 16, 16), -8, torch.tensor([0, 1]), ops)
    assert out.shape == (2, max(model.num_classes(t) for t in model.tasks)) and model.tasks[0] == SOURCE
