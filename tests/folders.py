"""Small generated image-folder tasks and locally written timm weights, for the tests of your own
model and tasks (nothing is fetched from a hub)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (210, 200, 40)}


def make_task(root: Path, classes: list[str], n: int = 8, seed: int = 0, split: str | None = None) -> Path:
    """ROOT/[SPLIT/]CLASS/i.png: each class a colour with noise, sizes varying around 64 px."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        d = root / split / cls if split else root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = rng.integers(48, 96, 2)
            px = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / f"{i}.png")
    return root


def write_timm_weights(path: Path, name: str = "test_vit", seed: int = 0) -> Path:
    """A timm model's weights as .safetensors, as a user would bring them."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
