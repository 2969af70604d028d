"""Write the labelled image sample shipped in otas/assets/sample/ (PNG, so corruptions survive).

    python scripts/make_sample.py --per-class 8

For each task, `per-class` test images per class, spread over the CIFAR-10 test set; corrupted
tasks use the same fixed-seed corruption as evaluation (`otas.train.common.corrupt_set`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from otas.data.cifar import load_cifar10
from otas.data.tasks import TASKS
from otas.train.common import corrupt_set


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("otas/assets/sample"))
    args = ap.parse_args()
    test = load_cifar10("test")
    for name, spec in TASKS.items():
        data = corrupt_set(test.subset(list(spec.classes)), spec.corruption, seed=1)
        for c, cls in enumerate(spec.classes):
            idx = [i for i, y in enumerate(data.labels) if y == c]
            step = len(idx) // args.per_class
            for j in idx[::step][: args.per_class]:
                d = args.out / name / cls
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(data.images[j]).save(d / f"{j:05d}.png", optimize=True)


if __name__ == "__main__":
    main()
