"""Where a task's images come from: a built-in CIFAR-10 task by name, or your own image folder.

A folder task is ``NAME=DIR`` with DIR an ImageFolder: ``DIR/CLASS/IMAGE`` (one sub-folder per
class), or ``DIR/train/CLASS/IMAGE`` and ``DIR/val/CLASS/IMAGE``. Without train/ and val/, a seeded
split holds out `val_fraction` of every class; the split (seed, fraction, counts) is recorded in
the checkpoint, so `otas profile` measures on the same held-out images. Images are resized and
cropped as the model's `Preprocess` says. A folder that cannot make a task (a missing folder, one
class, a class without images, a corrupt file) is refused with the reason and the fix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otas.data.folder import IMAGE_SUFFIXES, ImageSet, load_image_folder
from otas.data.preprocess import Preprocess
from otas.data.tasks import TASKS, get_task
from otas.types import NAME

VAL_FRACTION = 0.2


@dataclass(frozen=True)
class TaskSource:
    """One task to train or profile: `root` None is the built-in CIFAR-10 task `name`."""

    name: str
    root: Path | None = None

    @classmethod
    def parse(cls, arg: str) -> TaskSource:
        """``NAME=DIR`` (your folder) or ``NAME`` (a built-in task: novel, lowlight, blur)."""
        name, sep, path = arg.partition("=")
        name = name.strip()
        if not NAME.match(name) or name == "source":
            raise ValueError(
                f"--task {arg!r}: a task name is 1-64 letters, digits, '_', '.' or '-' (not 'source'); "
                "write NAME=DIR for your folder or a built-in name"
            )
        if not sep:
            get_task(name)  # raises with the known names
            return cls(name)
        if not path:
            raise ValueError(f"--task {arg!r}: give the folder after '=', e.g. --task {name}=data/{name}")
        return cls(name, Path(path).expanduser())


@dataclass
class TaskData:
    """A task's images, uint8 (N, size, size, 3) at the model's input, and where they came from."""

    train: ImageSet | None
    val: ImageSet
    corruption: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Recorded in the checkpoint: kind, path, split, classes, image counts."""


def load_task(
    src: TaskSource,
    pre: Preprocess,
    data: Path | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    recorded: dict[str, Any] | None = None,
    need_train: bool = True,
) -> TaskData:
    """The train and validation images of `src`. `recorded`: the split a checkpoint recorded for
    this task (the same folder is split the same way); `data`: the CIFAR-10 archive."""
    if src.root is None:
        return _builtin(src.name, pre, data, need_train)
    root = src.root
    if not root.is_dir():
        raise ValueError(f"--task {src.name}={root}: no such folder; give an ImageFolder (DIR/CLASS/IMAGE)")
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val and (need_train or has_train):
        raise ValueError(
            f"--task {src.name}={root}: it has {'train/' if has_train else 'val/'} but no "
            f"{'val/' if has_train else 'train/'}; give both, or put the class folders directly in {root}"
        )
    if has_train and has_val:
        train = _folder(src, root, "train", pre) if need_train else None
        val = _folder(src, root, "val", pre)
        if train is not None and train.classes != val.classes:
            raise ValueError(
                f"--task {src.name}={root}: train/ has classes {train.classes} but val/ has {val.classes}; "
                "give both splits the same class folders"
            )
        split: dict[str, Any] = {"kind": "folders"}
    elif has_val:  # a validation folder only, to measure on
        train, val, split = None, _folder(src, root, "val", pre), {"kind": "folders"}
    else:
        rec = (recorded or {}).get("split", {})
        same = (recorded or {}).get("path") == str(root.resolve()) and rec.get("kind") == "seeded"
        seed, val_fraction = (rec["seed"], rec["val_fraction"]) if same else (seed, val_fraction)
        whole = _folder(src, root, None, pre)
        if not need_train and not same:  # a folder to measure on, not the one trained from
            train, val, split = None, whole, {"kind": "all"}
        else:
            train, val = _split(src, whole, seed, val_fraction)
            split = {"kind": "seeded", "seed": seed, "val_fraction": val_fraction}
    info = {
        "kind": "folder",
        "path": str(root.resolve()),
        "split": split,
        "classes": val.classes,
        "train_images": len(train) if train is not None else None,
        "val_images": len(val),
    }
    return TaskData(train, val, None, info)


@functools.lru_cache(maxsize=2)
def _cifar(split: str, data: Path | None, pre: Preprocess) -> ImageSet:
    """A CIFAR-10 split, read once for all the built-in tasks of a run (`release_cifar` frees it)."""
    from otas.data.cifar import load_cifar10

    return load_cifar10(split, data, progress=split == "train", preprocess=pre)


def release_cifar() -> None:
    """Free the CIFAR-10 splits `load_task` kept for the built-in tasks (call once every task is loaded)."""
    _cifar.cache_clear()


def _builtin(name: str, pre: Preprocess, data: Path | None, need_train: bool) -> TaskData:
    from otas.train.common import corrupt_set

    spec = get_task(name)
    classes = list(spec.classes)
    train = _cifar("train", data, pre).subset(classes) if need_train else None  # subset copies: the cache stays
    val = corrupt_set(_cifar("test", data, pre).subset(classes), spec.corruption, 1)
    info = {"kind": "builtin", "classes": classes, "description": spec.description, "val_images": len(val)}
    return TaskData(train, val, spec.corruption, info)


def _folder(src: TaskSource, root: Path, split: str | None, pre: Preprocess) -> ImageSet:
    where = root / split if split else root
    dirs = sorted(d for d in where.iterdir() if d.is_dir() and not d.name.startswith("."))
    fix = f"put each class's images in its own sub-folder: {where}/CLASS/IMAGE.jpg, at least 2 classes"
    if not dirs:
        raise ValueError(f"--task {src.name}={root}: {where} has no class folders; {fix}")
    empty = [d.name for d in dirs if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())]
    if empty:
        raise ValueError(
            f"--task {src.name}={root}: class folder(s) {empty} in {where} hold no images "
            f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
        )
    if len(dirs) < 2:
        raise ValueError(f"--task {src.name}={root}: {where} has one class ({dirs[0].name}); {fix}")
    try:
        return load_image_folder(root, split, progress=True, preprocess=pre)
    except ValueError as e:
        raise ValueError(f"--task {src.name}={root}: {e}") from None


def _split(src: TaskSource, whole: ImageSet, seed: int, val_fraction: float) -> tuple[ImageSet, ImageSet]:
    """Hold out `val_fraction` of every class (at least one image), reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c, name in enumerate(whole.classes):
        idx = np.flatnonzero(whole.labels == c)
        if len(idx) < 2:
            raise ValueError(
                f"--task {src.name}={src.root}: class {name!r} has {len(idx)} image; a held-out split needs at "
                "least 2 per class (or give train/ and val/ sub-folders)"
            )
        k = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx.append(rng.permutation(idx)[:k])
    is_val = np.zeros(len(whole), bool)
    is_val[np.concatenate(val_idx)] = True

    def part(mask: np.ndarray) -> ImageSet:
        return ImageSet(whole.images[mask], whole.labels[mask], whole.classes)

    return part(~is_val), part(is_val)


def builtin_names() -> list[str]:
    return sorted(t for t in TASKS if t != "source")
