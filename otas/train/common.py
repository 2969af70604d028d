"""Shared training pieces: data on the device, batches, learning-rate schedule, evaluation."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from otas.data.folder import ImageSet
from otas.data.preprocess import Preprocess
from otas.data.tasks import TaskSpec, corrupt, get_task
from otas.data.transforms import augment, normalize, random_crop_flip, to_float


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the fast path), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(data: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded once, kept on the device as uint8: (N, H, W, 3), (N,)."""
    return torch.from_numpy(data.images).to(device), torch.from_numpy(data.labels).to(device)


@dataclass
class SourceData:
    """A built-in task's CIFAR-10 train and test images on the device (uint8 (N, 32, 32, 3), labels (N,))."""

    spec: TaskSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)


def source_data(task: str, data: Path | None, device: torch.device, limit: int | None = None) -> SourceData:
    """The train and test split of built-in task `task` (the source task for backbones and teachers),
    decoded once and moved to `device`; `limit`: only the first images of each (smoke tests)."""
    from otas.data.cifar import load_cifar10

    spec = get_task(task)
    train = load_cifar10("train", data).subset(list(spec.classes))
    test = load_cifar10("test", data).subset(list(spec.classes))
    if limit:
        train, test = train.head(limit), test.head(limit)
    return SourceData(spec, *to_device(train, device), *to_device(test, device))


def corrupt_set(data: ImageSet, kind: str | None, seed: int = 0) -> ImageSet:
    """A fixed corrupted copy of `data` (uint8, like a camera would store it), for evaluation."""
    if kind is None:
        return data
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(data), 1000):
        x = to_float(torch.from_numpy(data.images[i : i + 1000]))
        y = corrupt(x, kind, g)
        out.append((y * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return ImageSet(np.concatenate(out), data.labels, data.classes)


def train_batch(images: torch.Tensor, kind: str | None, pre: Preprocess, policy: str | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) on the device -> augmented, corrupted, normalized as the model's `pre` (B, 3, H, W).

    `policy`: an `otas.data.transforms.AUGMENTS` policy applied first (None: crop and flip only)."""
    if policy is not None:
        images = augment(images, policy)
    x = random_crop_flip(to_float(images))
    x = corrupt(x, kind)
    if kind is not None:
        x = (x * 255).round() / 255  # quantized like the stored evaluation images
    return normalize(x, pre)


def batches(n: int, batch_size: int, device: torch.device, shuffle: bool = True, drop_last: bool = True):
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
@torch.inference_mode()
def evaluate(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    gamma: int = 0,
    task: str = "source",
    batch_size: int = 500,
    dtype: torch.dtype | None = None,
) -> float:
    """Top-1 accuracy of `model` at γ on uint8 images (N, H, W, 3) already on the model's device, at
    its input size and normalised as `model.preprocess` says.

    `dtype`: feed the model inputs of this dtype (a model already cast to it) instead of autocast."""
    correct = 0
    with autocast(images.device) if dtype is None else nullcontext():
        for i in range(0, len(labels), batch_size):
            x = normalize(to_float(images[i : i + batch_size]), model.preprocess)
            x = x if dtype is None else x.to(dtype)
            logits = model(x, gamma, task) if gamma is not None else model(x)
            correct += int((logits.argmax(-1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)
