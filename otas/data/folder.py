"""Labelled image datasets as folders of images per class, from a directory or a .tar.gz.

Layout (the usual ImageFolder one): ``ROOT/[SPLIT/]CLASS/IMAGE.{jpg,png,...}``. An archive may also
hold one top-level folder around it. Images are decoded once into a uint8 array and cached as
``.npz`` (see `cache_dir`), so later runs load in a second.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from otas.data.preprocess import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageSet:
    images: np.ndarray
    """(N, H, W, 3) uint8, RGB."""
    labels: np.ndarray
    """(N,) int64 indices into `classes`."""
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> ImageSet:
        """A spread of `n` images (every k-th), keeping every class present."""
        step = max(1, len(self) // n)
        return ImageSet(self.images[::step][:n], self.labels[::step][:n], self.classes)

    def subset(self, classes: list[str]) -> ImageSet:
        """The images of `classes` only, relabelled 0..len(classes)-1 in that order."""
        missing = [c for c in classes if c not in self.classes]
        if missing:
            raise ValueError(f"classes {missing} not in this dataset; it has {self.classes}")
        remap = np.full(len(self.classes), -1, dtype=np.int64)
        for i, c in enumerate(classes):
            remap[self.classes.index(c)] = i
        new = remap[self.labels]
        keep = new >= 0
        return ImageSet(self.images[keep], new[keep], list(classes))


def cache_dir() -> Path:
    return Path(os.environ.get("OTAS_CACHE", Path.home() / ".cache" / "otas"))


def decode(data: bytes, pre: Preprocess | int | None) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8, resized and cropped as a model's `pre` says (an int:
    a plain resize to that square side; None: as stored)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if pre is not None:
            im = (Preprocess(pre) if isinstance(pre, int) else pre).fit(im)
        return np.asarray(im, dtype=np.uint8)


def _fingerprint(root: Path) -> str:
    """Size and mtime of an archive, or of every file under a folder (a changed image changes it)."""
    if not root.is_dir():
        st = root.stat()
        return f"{st.st_size}|{st.st_mtime_ns}"
    h = hashlib.sha1()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _split_path(parts: list[str], split: str | None) -> tuple[str, str] | None:
    """(class, file) for an archive member's path parts, or None if it is not in `split`."""
    if len(parts) < 2 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    if split is None:
        return parts[-2], parts[-1]
    if split in parts[:-2]:
        return parts[-2], parts[-1]
    return None


def _iter_files(root: Path, split: str | None):
    """Yield (class, name, bytes) for every image of `split` under a directory or in an archive."""
    if root.is_dir():
        base = root / split if split else root
        if not base.is_dir():
            raise ValueError(f"{root} has no '{split}' folder")
        for f in sorted(base.glob("*/*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                yield f.parent.name, f.name, f.read_bytes()
    else:
        try:
            with tarfile.open(root, "r:*") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    where = _split_path(m.name.strip("/").split("/"), split)
                    if where:
                        yield where[0], where[1], tar.extractfile(m).read()  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:  # (gzip, bz2: OSError)
            raise ValueError(
                f"{root} is neither a folder nor a readable tar archive (tar, .tar.gz, .tar.bz2, .tar.xz): "
                f"{type(e).__name__}: {str(e)[:200] or 'truncated'}; fetch it again or point at the image folder"
            ) from None


def load_image_folder(
    path: str | Path,
    split: str | None = None,
    image_size: int | None = None,
    progress: bool = True,
    preprocess: Preprocess | None = None,
) -> ImageSet:
    """Decode (or load from cache) every image of `split` under `path`; classes sorted by name.
    Images are resized and cropped as `preprocess` says (a model's), or resized to `image_size`."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"dataset {root} does not exist")
    pre = preprocess or image_size
    how = preprocess.to_dict() if preprocess else image_size
    tag = hashlib.sha1(f"{root.resolve()}|{_fingerprint(root)}|{split}|{how}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{root.name}.{split or 'all'}.{tag}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return ImageSet(z["images"], z["labels"], [str(c) for c in z["classes"]])

    from otas.progress import Progress

    items: list[tuple[str, str, np.ndarray]] = []
    bad: list[str] = []
    with Progress(transient=True, disable=not progress) as bar:
        job = bar.add_task(f"decoding {root.name} [{split or 'all'}]", total=None)
        for cls, name, data in _iter_files(root, split):
            try:
                items.append((cls, name, decode(data, pre)))
            except UnidentifiedImageError:
                bad.append(f"{cls}/{name} (not an image format Pillow reads)")
            except Exception as e:  # noqa: BLE001 - PIL raises many types on a truncated or corrupt file
                bad.append(f"{cls}/{name} ({type(e).__name__}: {str(e)[:80]})")
            bar.advance(job)
    if bad:  # nothing is skipped silently: a dataset is used whole or not at all
        raise ValueError(
            f"{len(bad)} image(s) in {root} (split={split!r}) cannot be decoded: {'; '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; fix or remove them"
        )
    if not items:
        raise ValueError(f"no images found in {root} (split={split!r}); expected ROOT/[SPLIT/]CLASS/IMAGE.jpg")
    shapes = {im.shape for _, _, im in items}
    if len(shapes) > 1:
        raise ValueError(f"images in {root} have several sizes {sorted(shapes)[:4]}...; pass image_size")
    items.sort(key=lambda t: (t[0], t[1]))
    classes = sorted({c for c, _, _ in items})
    images = np.stack([im for _, _, im in items])
    labels = np.array([classes.index(c) for c, _, _ in items], dtype=np.int64)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels, classes=np.array(classes))
    tmp.replace(cached)
    return ImageSet(images, labels, classes)
