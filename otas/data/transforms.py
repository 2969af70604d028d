"""Preprocessing and on-device augmentation of uint8 image batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otas.data.preprocess import Preprocess


def to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255)


class Normalize:
    """The model's input normalisation, the one place it is done (training, evaluation, the runner).

    Mean and std are the model's (`AdaptiveViT.preprocess`, stored in its checkpoint); they
    are made once on the device, so a call makes no host-to-device copy and can run
    inside CUDA-graph capture. Takes uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1]; returns
    float32 (B, 3, H, W).
    """

    def __init__(self, mean, std, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @classmethod
    def of(cls, pre: Preprocess, device: torch.device | str = "cpu") -> Normalize:
        return cls(pre.mean, pre.std, device)

    def to(self, device: torch.device | str) -> Normalize:
        return Normalize(self.mean.flatten().tolist(), self.std.flatten().tolist(), device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = to_float(x)
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Float (B, 3, H, W) in [0, 1] or uint8 (B, H, W, 3) -> float32 (B, 3, H, W) normalised as `pre` says."""
    return Normalize.of(pre, x.device)(x)


AUGMENTS = ("trivial",)
"""Policies `augment` knows: "trivial" is TrivialAugment (Müller & Hutter, 2021), torchvision's `TrivialAugmentWide`."""


def augment(images: torch.Tensor, policy: str, chunk: int = 32) -> torch.Tensor:
    """A per-image-group augmentation policy on uint8 (B, H, W, 3) -> uint8 (B, H, W, 3), on the device.

    torchvision's batched policies draw one operation and magnitude per call, so the batch is cut into
    groups of `chunk` images that each get their own draw (16 draws in a batch of 512).
    """
    if policy not in AUGMENTS:
        raise ValueError(f"unknown augmentation {policy!r}; known: {', '.join(AUGMENTS)}")
    from torchvision.transforms import v2

    op = v2.TrivialAugmentWide()
    x = images.permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    out = torch.cat([op(part.contiguous()) for part in x.split(chunk)])
    return out.permute(0, 2, 3, 1).contiguous()


def random_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop after reflect padding, and a random horizontal flip, per image. x (B, C, H, W)."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (B,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (B,), device=x.device)
    rows = dy[:, None] + torch.arange(H, device=x.device)[None]  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=x.device)[None]  # (B, W)
    flip = torch.rand(B, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_r = rows[:, None, :, None].expand(B, C, H, W + 2 * pad)
    out = xp.gather(2, idx_r)  # (B, C, H, W + 2 pad)
    idx_c = cols[:, None, None, :].expand(B, C, H, W)
    return out.gather(3, idx_c)


def mix(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    smoothing: float = 0.1,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one of them per batch, at random) with label smoothing -> soft targets."""
    target = F.one_hot(y, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    perm = torch.randperm(x.shape[0], device=x.device)
    if torch.rand(()) < 0.5:
        lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
        x = lam * x + (1 - lam) * x[perm]
    else:
        lam = float(torch.distributions.Beta(cutmix_alpha, cutmix_alpha).sample())
        H, W = x.shape[-2:]
        h, w = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1, x0, x1 = max(cy - h // 2, 0), min(cy + h // 2, H), max(cx - w // 2, 0), min(cx + w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    return x, lam * target + (1 - lam) * target[perm]
