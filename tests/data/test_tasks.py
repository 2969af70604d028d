import pytest
import torch

from otas.data.tasks import DOWNSTREAM, TASKS, corrupt, get_task
from otas.data.transforms import mix, random_crop_flip


def test_tasks_are_downstream_of_the_source():
    src = set(TASKS["source"].classes)
    assert set(TASKS["novel"].classes).isdisjoint(src)
    assert TASKS["lowlight"].classes == TASKS["source"].classes and TASKS["lowlight"].corruption
    assert set(DOWNSTREAM) == {"novel", "lowlight", "blur"}
    with pytest.raises(ValueError, match="unknown task"):
        get_task("imagenet")


def test_corruptions_are_deterministic_and_do_what_they_say():
    x = torch.rand(4, 3, 32, 32)
    dark = corrupt(x, "lowlight", torch.Generator().manual_seed(0))
    assert torch.equal(dark, corrupt(x, "lowlight", torch.Generator().manual_seed(0)))
    assert dark.mean() < 0.4 * x.mean() and dark.min() >= 0
    blur = corrupt(x, "blur", torch.Generator().manual_seed(0))
    hf = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()
    assert blur.shape == x.shape and hf(blur) < 0.5 * hf(x)
    torch.testing.assert_close(blur.mean(), x.mean(), atol=0.02, rtol=0)
    assert corrupt(x, None) is x
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog")


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    y = random_crop_flip(x, pad=2)
    assert y.shape == x.shape
    # rows of a crop are consecutive rows of the reflect-padded image: row differences stay 8 or reflect
    assert set((y[:, :, 1:, 0] - y[:, :, :-1, 0]).abs().unique().tolist()) <= {0.0, 8.0}


def test_mix_targets_are_distributions():
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    xm, t = mix(x, y, 5)
    assert xm.shape == x.shape and t.shape == (8, 5)
    torch.testing.assert_close(t.sum(-1), torch.ones(8))
