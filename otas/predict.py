"""Classify images with a token-adaptive model: decode, preprocess, forward at γ, top-k labels."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from otas.adapt import AdaptiveViT
from otas.config import asset_path
from otas.engine.images import ACCEPTABLE, DecodeLimits, ImageError, decode_image
from otas.engine.runner import Runner
from otas.models.checkpoint import load_checkpoint

DEFAULT_MODEL = "vit_tiny_p2_c5.safetensors"
MAX_BATCH = 64
MAX_FILE_BYTES = 64 << 20
"""Largest image file read (a 24 MP JPEG is about 10 MB)."""
FILE_LIMITS = DecodeLimits(max_side=16384, max_pixels=1 << 26, formats=ACCEPTABLE)
"""What a local file may declare: the server's checks (`DecodeLimits`) with room for camera
photos (64 MP, 16,384 px a side; a JPEG counts at its reduced decode size)."""


def read_image_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; ValueError naming the path otherwise
    (a directory, a device such as /dev/zero, a FIFO, a missing or unreadable file)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ValueError(f"{p}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: not a regular file; give image files (PNG, JPEG or WEBP)")
    if st.st_size > max_bytes:
        raise ValueError(f"{p}: {st.st_size} bytes is over the limit of {max_bytes}; downscale it first")
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as e:
        raise ValueError(f"{p}: cannot read it ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise ValueError(f"{p}: over the limit of {max_bytes} bytes; downscale it first")
    return data


def default_model_path() -> Path:
    """The model shipped inside the package (ViT-Tiny, patch 2, trained on 5 CIFAR-10 classes)."""
    return asset_path(DEFAULT_MODEL)


def sample_dir() -> Path:
    """The labelled image sample shipped inside the package: sample/<task>/<class>/<image>.png."""
    return asset_path("sample")


class Predictor:
    """Offline classification through the serving `Runner` (the one forward the server runs)."""

    def __init__(self, model: AdaptiveViT, device: str = "cpu", dtype: torch.dtype = torch.float32, mode: str = ""):
        # On a CPU eager, not the server's traced path (the same function, bit for bit): a one-shot
        # command has no other Python thread to share the GIL with, and a trace per γ costs ~1 s.
        mode = mode or ("eager" if torch.device(device).type == "cpu" else "")
        self.runner = Runner(model, device, dtype, max_batch=MAX_BATCH, mode=mode)
        self.model = self.runner.model
        self.image_size = self.runner.image_size

    @classmethod
    def load(cls, path: Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Predictor:
        """`path`: a checkpoint or a model package directory (default: the shipped model)."""
        from otas.models.package import ModelPackage

        ckpt = ModelPackage.open(path).checkpoint if path is not None else default_model_path()
        return cls(load_checkpoint(ckpt, "cpu", torch.float32), device, dtype)

    def labels(self, task: str) -> list[str]:
        if task not in self.runner.classes:
            raise ValueError(f"unknown task {task!r}; this model serves {self.model.tasks}")
        return self.runner.classes[task]

    def decode(self, data: bytes, limits: DecodeLimits = FILE_LIMITS) -> np.ndarray:
        """Encoded image -> (H, W, 3) uint8, decoded, resized and cropped as the server does
        (`decode_image`, within `limits`); ValueError if it is not an acceptable image."""
        try:
            return decode_image(data, self.runner.preprocess, limits)
        except ImageError as e:
            raise ValueError(str(e)) from None

    def probs(self, images: np.ndarray | torch.Tensor, task: str | Sequence[str], gamma: int) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> class probabilities (B, K) at γ, in chunks of the runner's batch."""
        x = torch.as_tensor(images)
        tasks = [task] * len(x) if isinstance(task, str) else list(task)
        out = [
            torch.from_numpy(self.runner.forward(x[i : i + MAX_BATCH], tasks[i : i + MAX_BATCH], gamma))
            for i in range(0, len(x), MAX_BATCH)
        ]
        return torch.cat(out)

    def topk(self, probs: torch.Tensor, task: str, k: int) -> list[list[tuple[str, float]]]:
        labels = self.labels(task)
        k = min(k, len(labels))
        p, i = probs[:, : len(labels)].topk(k, dim=-1)
        return [
            [(labels[j], float(q)) for j, q in zip(ii.tolist(), pp.tolist(), strict=True)]
            for pp, ii in zip(p, i, strict=True)
        ]

    def classify_files(self, paths: Sequence[Path], task: str, gamma: int, k: int = 3):
        if not paths:
            raise ValueError("no image files given")
        images = []
        for p in paths:
            try:
                images.append(self.decode(read_image_file(p)))
            except ValueError as e:
                raise ValueError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
        images = np.stack(images)
        return self.topk(self.probs(images, task, gamma), task, k)
