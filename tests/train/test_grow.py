"""Growing a ViT wider (`otas.train.grow`): the wide model computes the narrow one's function, at every γ."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.models.registry import build_vit
from otas.train.grow import widen_vit


def _pair(dim: int, heads: int, k: int, depth: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    small = build_vit("vit_tiny_p2", 5, embed_dim=dim, num_heads=heads, depth=depth).double().eval()
    for p in small.parameters():  # trained weights are not timm's init: make every weight matter
        p.data.add_(0.05 * torch.randn_like(p))
    big = build_vit("vit_tiny_p2", 5, embed_dim=k * dim, num_heads=k * heads, depth=depth).double().eval()
    return small, big


@settings(max_examples=6, deadline=None)
@given(k=st.sampled_from([2, 3]), heads=st.sampled_from([1, 2]), spread=st.floats(0.0, 0.9), seed=st.integers(0, 99))
def test_grown_model_computes_the_same_logits(k, heads, spread, seed):
    small, big = _pair(16 * heads, heads, k, seed=seed)
    assert widen_vit(small, big, spread, seed) == k
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(big(x), small(x), rtol=1e-9, atol=1e-9)


def test_same_function_under_merging_and_the_copies_are_not_copies():
    small, big = _pair(32, 2, 2, depth=4)
    widen_vit(small, big)
    cfg = AdaptConfig(gammas=(-20, -8, 0))
    a, b = AdaptiveViT(small, cfg).double().eval(), AdaptiveViT(big, cfg).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for g in (-20, -8, 0):  # size-weighted merging, proportional attention: the same tokens merge
        torch.testing.assert_close(b(x, g), a(x, g), rtol=1e-9, atol=1e-9)
    fc1 = big.blocks[0].mlp.fc1.weight  # (2H, 2D): the two copies of a unit read their input differently
    h = fc1.shape[0] // 2
    assert not torch.allclose(fc1[:h], fc1[h:])


def test_uneven_shapes_are_refused_with_the_reason():
    small = build_vit("vit_tiny_p2", 5, embed_dim=32, num_heads=2, depth=2)
    with pytest.raises(ValueError, match="depth"):
        widen_vit(small, build_vit("vit_tiny_p2", 5, embed_dim=64, num_heads=4, depth=3))
    with pytest.raises(ValueError, match="heads per width"):
        widen_vit(small, build_vit("vit_tiny_p2", 5, embed_dim=64, num_heads=2, depth=2))
    with pytest.raises(ValueError, match="multiple"):
        widen_vit(small, build_vit("vit_tiny_p2", 5, embed_dim=48, num_heads=3, depth=2))
    with pytest.raises(ValueError, match="spread"):
        widen_vit(small, build_vit("vit_tiny_p2", 5, embed_dim=64, num_heads=4, depth=2), spread=1.0)
