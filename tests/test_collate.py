"""Collation into the staging buffer: the bytes np.stack would write, for every kind of input."""

import numpy as np
import pytest

from otas.collate import collate


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize("n", [1, 5, 16])
def test_collate_writes_what_np_stack_writes_and_leaves_the_rest(n):
    out = np.full((16, 8, 8, 3), 7, np.uint8)
    ims = images(n)
    view = collate(ims, out)
    assert view.shape == (n, 8, 8, 3) and np.shares_memory(view, out)
    np.testing.assert_array_equal(out[:n], np.stack(ims))
    assert (out[n:] == 7).all()


def test_collate_takes_one_array_strided_images_and_other_integer_types_as_numpy_would():
    out = np.zeros((4, 8, 8, 3), np.uint8)
    batch = np.stack(images(3, 1))
    np.testing.assert_array_equal(collate(batch, out), batch)
    strided = [np.ascontiguousarray(im.transpose(1, 0, 2)).transpose(1, 0, 2) for im in images(3, 2)]
    assert not strided[0].flags.c_contiguous
    np.testing.assert_array_equal(collate(strided, out), np.stack(strided))
    wide = [im.astype(np.uint16) for im in images(2, 3)]  # same kind: cast, as np.stack casts
    np.testing.assert_array_equal(collate(wide, out), np.stack(wide))
    with pytest.raises(TypeError):  # np.stack's own casting rule: float -> uint8 is not same_kind
        collate([im.astype(np.float32) for im in images(2, 3)], out)


def test_collate_refuses_a_batch_past_the_buffer_or_of_mixed_shapes():
    out = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="holds 2"):
        collate(images(3), out)
    with pytest.raises(ValueError):
        collate([images(1)[0], np.zeros((4, 4, 3), np.uint8)], out)
