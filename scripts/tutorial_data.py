"""Make the inputs of docs/own-model.md without a download: two small image-folder tasks and the
weights of timm's tiny test ViT, written locally as .safetensors.

    python scripts/tutorial_data.py DIR
      DIR/colours/{red,green,blue}/*.png     a task with 3 classes (no train/val: a split is held out)
      DIR/lights/{train,val}/{amber,white}/  a task with its own train and val splits
      DIR/test_vit.safetensors               randomly initialised timm:test_vit weights (seed 0)

The images are coloured noise of varying size: enough to exercise every step, not to measure accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "amber": (230, 150, 20),
           "white": (225, 225, 215)}  # fmt: skip


def make_task(root: Path, classes: list[str], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = rng.integers(48, 120, 2)
            px = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 35, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / cls / f"{i:03d}.png")


def main(out: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    make_task(out / "colours", ["red", "green", "blue"], n=10, seed=0)
    make_task(out / "lights" / "train", ["amber", "white"], n=8, seed=1)
    make_task(out / "lights" / "val", ["amber", "white"], n=4, seed=2)
    torch.manual_seed(0)
    model = timm.create_model("test_vit")  # built locally, nothing fetched
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "test_vit.safetensors"))
    print(f"wrote {out}/colours, {out}/lights and {out}/test_vit.safetensors")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/tutorial_data.py DIR")
    main(Path(sys.argv[1]))
