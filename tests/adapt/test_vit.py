import threading
import warnings

import pytest
import torch
from timm.models import vision_transformer as tv

from otas.adapt import SOURCE, AdaptConfig, AdaptiveViT, MergeCapWarning
from otas.adapt.attention import attention_reference, attention_with_keys
from otas.models.registry import build_vit

from .conftest import small_model

VARIANTS = [
    ("vit_tiny_p2", {}),
    ("vit_small_p2", {"img_size": 16, "depth": 3}),
    ("timm:vit_tiny_patch16_224", {"img_size": 64, "depth": 3}),
    ("timm:vit_small_patch8_224", {"img_size": 32, "depth": 2, "global_pool": "avg", "class_token": False}),
    ("timm:vit_base_patch16_224", {"img_size": 48, "depth": 2, "reg_tokens": 4, "no_embed_class": True}),
]


@pytest.mark.parametrize("arch,kw", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_gamma0_is_stock_timm(arch, kw):
    torch.manual_seed(0)
    vit = build_vit(arch, 7, **kw).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AdaptiveViT(vit, AdaptConfig(gammas=(-2, 0, 2), tasks={"t": 4})).eval()
    size = vit.patch_embed.img_size
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        ref = vit(x)
        assert (model(x, 0) - ref).abs().max() <= 1e-5
        # the explicit stock path used by task heads and by merging matches timm's features too
        feats = model.forward_features(x, 0, [SOURCE] * 3)
        ref_feats = vit.forward_head(vit.forward_features(x), pre_logits=True)
        assert (feats - ref_feats).abs().max() <= 1e-5
        for g in (-2, 2):  # every γ runs on every variant
            assert model(x, g, "t").shape == (3, 4)


def test_token_counts_per_layer(model):
    x = torch.randn(2, 3, 16, 16)
    for g in model.config.gammas:
        seen = []
        hooks = (
            [
                blk.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].shape[1]))
                for blk in model.vit.blocks
            ]
            if g >= 0
            else []
        )
        if g < 0:  # merged blocks are run piecewise: count tokens entering each block's norm1
            hooks = [
                blk.norm1.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].shape[1]))
                for blk in model.vit.blocks
            ]
        model(x, g, "a")
        for h in hooks:
            h.remove()
        assert seen == model.token_counts(g)[:-1], g
    assert model.token_counts(-8) == [65, 57, 49, 41, 33]
    assert model.token_counts(4) == [69] * 5


def test_merged_sizes_sum_to_original_token_count(model):
    x = model.vit.patch_embed(torch.randn(2, 3, 16, 16))
    x = model.vit._pos_embed(x)
    out, size = model._blocks_merged(x, 8)
    assert out.shape[1] == 33
    torch.testing.assert_close(size.sum(1).flatten(), torch.full((2,), 65.0))


def test_proportional_attention_matches_explicit_reference(model):
    attn = model.vit.blocks[0].attn
    x = torch.randn(2, 11, model.vit.embed_dim, dtype=torch.float64)
    size = torch.randint(1, 5, (2, 11, 1)).double()
    attn = attn.double()
    out, k = attention_with_keys(attn, x, size)
    torch.testing.assert_close(out, attention_reference(attn, x, size))
    assert k.shape == (2, 11, attn.head_dim)
    out_unit, _ = attention_with_keys(attn, x, None)  # size None == all ones == stock attention
    torch.testing.assert_close(out_unit, attn(x))


def test_prompts_only_gradients_with_frozen_backbone(model):
    model.freeze_backbone()
    for p in model.task_parameters("a", 4):
        p.requires_grad_(True)
    loss = model(torch.randn(4, 3, 16, 16), 4, "a").logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is None for p in model.vit.parameters())
    assert model.prompts["a/4"].grad is not None and model.prompts["a/4"].grad.abs().sum() > 0
    assert model.heads["a/4"].weight.grad.abs().sum() > 0
    assert model.prompts["b/4"].grad is None and model.prompts["a/2"].grad is None
    assert model.prompts["a/4"].grad[1:].abs().sum() > 0  # deep: every block's prompts learn


def test_shallow_prompts_have_one_set():
    m = small_model(deep=False)
    assert m.prompts["a/4"].shape == (1, 4, m.vit.embed_dim)
    assert m(torch.randn(2, 3, 16, 16), 4, "a").shape == (2, 3)


def test_concurrent_forwards_equal_sequential(model):
    xs = {g: torch.randn(3, 3, 16, 16) for g in model.config.gammas}
    with torch.no_grad():
        expected = {g: model(xs[g], g, "b") for g in xs}
    results: dict[int, torch.Tensor] = {}

    def run(g):
        for _ in range(3):
            with torch.no_grad():
                results[g] = model(xs[g], g, "b")

    threads = [threading.Thread(target=run, args=(g,)) for g in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in xs:
        torch.testing.assert_close(results[g], expected[g])


def test_mixed_task_batch_equals_per_task(model):
    x = torch.randn(4, 3, 16, 16)
    tasks = ["a", "b", "a", "b"]
    with torch.no_grad():
        for g in (-4, 0, 4):
            mixed = model(x, g, tasks)
            a, b = model(x[[0, 2]], g, "a"), model(x[[1, 3]], g, "b")
            torch.testing.assert_close(mixed[[0, 2], :3], a, atol=1e-5, rtol=1e-5)
            assert torch.isinf(mixed[[0, 2], 3:]).all()  # "a" has 3 classes: padded with -inf
            torch.testing.assert_close(mixed[[1, 3]], b, atol=1e-5, rtol=1e-5)


def test_bad_gamma_task_and_impossible_merge_raise(model):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="not in the configured set"):
        model(x, 3, "a")
    with pytest.raises(ValueError, match="not in the configured set"):
        model(x, 1.5, "a")
    with pytest.raises(ValueError, match="unknown task"):
        model(x, 0, "nope")
    with pytest.raises(ValueError, match="not served at gamma"):
        model(x, 4, SOURCE)
    with pytest.raises(ValueError, match="task names for a batch"):
        model(x, 0, ["a", "b"])
    with pytest.raises(ValueError, match="cannot merge r=40"):
        small_model(gammas=(-40, 0))
    with pytest.raises(ValueError, match="must include 0"):
        AdaptConfig(gammas=(-4, 4))


@pytest.mark.parametrize("block", [tv.ResPostBlock, tv.ParallelScalingBlock, tv.ParallelThingsBlock])
def test_non_standard_blocks_are_rejected(block):
    with pytest.raises(ValueError, match=f"block 0 is {block.__name__}; .* only timm's standard pre-norm Block"):
        AdaptiveViT(build_vit("timm:vit_tiny_patch16_224", 5, img_size=32, depth=2, block_fn=block), AdaptConfig())
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=3)
    vit.blocks[2] = block(dim=vit.embed_dim, num_heads=3)  # one odd block is enough
    with pytest.raises(ValueError, match=f"block 2 is {block.__name__}"):
        AdaptiveViT(vit, AdaptConfig(gammas=(-4, 0)))


def test_capped_merge_is_reported():
    with pytest.warns(MergeCapWarning, match="capped") as seen:
        m = small_model(gammas=(-14, -12, 0))
    assert len(seen) == 1 and "gamma=-14" in str(seen[0].message)  # one report listing every capped γ
    assert -14 in m.merge_caps and m.merge_caps[-14] == m.merge_schedule(-14)
    assert m.token_counts(-14)[-1] >= 1


def test_forward_indexed_equals_forward(model):
    x = torch.randn(4, 3, 16, 16)
    names = ["a", "b", "b", "a"]
    idx = torch.tensor([model.tasks.index(t) for t in names])
    with torch.no_grad():
        for g in model.config.gammas:
            torch.testing.assert_close(model.forward_indexed(x, g, idx), model(x, g, names), atol=1e-5, rtol=1e-5)
        src = torch.zeros(4, dtype=torch.long)  # the source task through the indexed path (γ <= 0)
        torch.testing.assert_close(model.forward_indexed(x, -4, src)[:, :5], model(x, -4, SOURCE), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", ["max", "avgmax", ""])
def test_unsupported_pooling_is_rejected(pool):
    vit = build_vit("timm:vit_tiny_patch16_224", 5, img_size=32, depth=1, global_pool=pool)
    with pytest.raises(ValueError, match="global_pool=.*not supported with token adaptation"):
        AdaptiveViT(vit, AdaptConfig(gammas=(-2, 0)))
