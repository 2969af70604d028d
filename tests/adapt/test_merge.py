import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otas.adapt.merge import bipartite_soft_matching, merge_schedule, merge_wavg


def test_schedule_caps_where_few_tokens_remain():
    assert merge_schedule(257, 16, 12, 1) == [16] * 12
    sched = merge_schedule(257, 20, 12, 1)
    assert sched[:11] == [20] * 11 and sched[11] == 18  # 37 tokens left: at most 18 mergeable pairs


def test_merge_every_is_the_most_blocks_a_step_covers():
    """k·|γ| tokens at once in every k-th block; where k·|γ| cannot merge in the first block (at most
    half of the mergeable tokens), the largest k that can, so one merge_every serves every γ."""
    assert merge_schedule(257, 8, 12, 1, every=4) == [32, 0, 0, 0] * 3
    assert merge_schedule(257, 20, 12, 1, every=4)[:5] == [80, 0, 0, 0, 80]
    assert merge_schedule(257, 48, 12, 1, every=4) == merge_schedule(257, 48, 12, 1, every=2)  # 4·48 > 128
    assert merge_schedule(257, 48, 12, 1, every=2)[:3] == [96, 0, 80]  # then capped: 161 tokens left
    assert merge_schedule(257, 100, 12, 1, every=4) == merge_schedule(257, 100, 12, 1)  # only k = 1 fits
    assert merge_schedule(257, 8, 3, 1, every=8) == [24, 0, 0]  # a step covers at most the depth
    for r in range(0, 129):
        for k in (1, 2, 3, 4, 6):
            sched = merge_schedule(257, r, 12, 1, every=k)
            assert sum(sched) <= r * 12 and all(s >= 0 for s in sched)
            n = 257
            for s in sched:  # never more than half of what is mergeable
                assert s <= (n - 1) // 2
                n -= s


def test_schedule_rejects_impossible_merge():
    with pytest.raises(ValueError, match="cannot merge r=129"):
        merge_schedule(257, 129, 12, 1)
    with pytest.raises(ValueError, match="r must be >= 0"):
        merge_schedule(257, -1, 12, 1)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(2, 40), C=st.integers(1, 8), data=st.data())
def test_merge_conserves_size_and_weighted_sum(B, N, C, data):
    r = data.draw(st.integers(0, N // 2))
    g = torch.Generator().manual_seed(N * 31 + C)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (B, N, 1), generator=g).double()
    merge = bipartite_soft_matching(torch.randn(B, N, 4, generator=g, dtype=torch.float64), r)
    y, new_size = merge_wavg(merge, x, size)
    assert y.shape == (B, N - r, C) and new_size.shape == (B, N - r, 1)
    torch.testing.assert_close(new_size.sum(1), size.sum(1))  # sizes sum to the original count
    torch.testing.assert_close((y * new_size).sum(1), (x * size).sum(1))  # mass is conserved


def test_merge_pairs_the_most_similar_tokens():
    # tokens 0 (A) and 1 (B) identical; 2 (A) and 3 (B) orthogonal to them and to each other
    metric = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    x = torch.tensor([[[2.0], [4.0], [10.0], [20.0]]])
    y, size = merge_wavg(bipartite_soft_matching(metric, 1), x, torch.ones(1, 4, 1))
    # unmerged A token (10) first, then B tokens: merged (2+4)/2 = 3 with size 2, and 20
    assert y.flatten().tolist() == [10.0, 3.0, 20.0]
    assert size.flatten().tolist() == [1.0, 2.0, 1.0]
