"""CIFAR-10 from the JPEG archive (``train/<class>/*.jpg``, ``test/<class>/*.jpg``)."""

from __future__ import annotations

import os
from pathlib import Path

from otas.data.folder import ImageSet, load_image_folder
from otas.data.preprocess import Preprocess

ARCHIVE_NAME = "cifar10-jpg.tar.gz"


def default_archive() -> Path:
    """$OTAS_CIFAR10, else the first of ./data, ../shared/data, ~/.cache/otas that holds the archive."""
    env = os.environ.get("OTAS_CIFAR10")
    if env:
        return Path(env)
    for d in (
        Path("data"),
        Path("../shared/data"),
        Path.cwd().parent / "shared" / "data",
        Path.home() / ".cache" / "otas",
    ):
        if (d / ARCHIVE_NAME).is_file():
            return d / ARCHIVE_NAME
    raise ValueError(
        f"CIFAR-10 archive {ARCHIVE_NAME} not found: set OTAS_CIFAR10=/path/to/{ARCHIVE_NAME} or pass --data"
    )


def load_cifar10(
    split: str, path: str | Path | None = None, progress: bool = True, preprocess: Preprocess | None = None
) -> ImageSet:
    """CIFAR-10's `split` at 32x32, or resized and cropped as a model's `preprocess` says."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pre = None if preprocess is None or preprocess == Preprocess(32) else preprocess  # 32x32 as stored
    return load_image_folder(path or default_archive(), split=split, image_size=32, progress=progress, preprocess=pre)
