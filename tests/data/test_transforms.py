"""On-device augmentation of uint8 batches."""

import pytest
import torch

from otas.data.transforms import augment


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)  # (B, H, W, 3)


@pytest.mark.parametrize("n", [1, 31, 64, 100])
def test_trivial_augment_keeps_shape_dtype_and_labels_order(n):
    torch.manual_seed(n)
    x = _batch(n, n)
    y = augment(x, "trivial", chunk=16)
    assert y.shape == x.shape and y.dtype == torch.uint8
    # each group of images gets its own draw, so a batch of many groups is changed somewhere
    if n >= 64:
        assert (y != x).any()


def test_groups_draw_their_own_operation():
    torch.manual_seed(0)
    x = _batch(1, 1).expand(256, -1, -1, -1).contiguous()  # one image, 256 times
    y = augment(x, "trivial", chunk=16)
    distinct = {bytes(y[i].numpy()) for i in range(0, 256, 16)}
    assert len(distinct) > 4  # 16 groups, one draw each: not all the same operation
    for i in range(0, 256, 16):  # within a group, one draw: identical inputs stay identical
        assert torch.equal(y[i], y[i + 15])


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(_batch(2), "autoaugment-imagenet")
