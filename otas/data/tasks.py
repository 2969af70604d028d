"""The source task the backbone is trained on and the downstream tasks the applications serve.

Prompts only pay off on a *frozen backbone applied to tasks it was not trained on*, so the
backbone learns 5 CIFAR-10 classes (`source`) and the applications' tasks are ones it never saw:

- ``novel``:    the other 5 classes (dog, frog, horse, ship, truck), clean images;
- ``lowlight``: the source classes photographed in low light: brightness x0.15-0.35 and sensor
                noise (signal-dependent shot noise plus read noise), as a night camera would see;
- ``blur``:     the novel classes out of focus: a Gaussian blur with sigma 1.0-1.6 pixels.

Corruptions run on the device on float images in [0, 1]; on the test split they are drawn from a
fixed seed so every evaluation sees the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SOURCE_CLASSES = CIFAR10_CLASSES[:5]
NOVEL_CLASSES = CIFAR10_CLASSES[5:]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    classes: tuple[str, ...]
    corruption: str | None = None
    """None, "lowlight" or "blur"."""
    description: str = ""


TASKS: dict[str, TaskSpec] = {
    "source": TaskSpec("source", tuple(SOURCE_CLASSES), None, "the backbone's own 5 classes"),
    "novel": TaskSpec("novel", tuple(NOVEL_CLASSES), None, "5 classes the backbone never saw"),
    "lowlight": TaskSpec(
        "lowlight", tuple(SOURCE_CLASSES), "lowlight", "source classes in low light with sensor noise"
    ),
    "blur": TaskSpec("blur", tuple(NOVEL_CLASSES), "blur", "novel classes out of focus"),
}
DOWNSTREAM = ("novel", "lowlight", "blur")


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def corrupt(x: torch.Tensor, kind: str | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a task's domain shift to float images x (B, 3, H, W) in [0, 1]."""
    if kind is None:
        return x
    B = x.shape[0]
    u = torch.rand(B, 1, 1, 1, generator=generator, device=x.device)  # (B, 1, 1, 1) per-image strength
    if kind == "lowlight":
        dark = x * (0.15 + 0.20 * u)
        shot = torch.randn(x.shape, generator=generator, device=x.device) * (dark * 0.01).sqrt()
        read = torch.randn(x.shape, generator=generator, device=x.device) * 0.02
        return (dark + shot + read).clamp(0, 1)
    if kind == "blur":
        sigma = 1.0 + 0.6 * u.view(B)  # (B,)
        k = torch.arange(-3, 4, device=x.device, dtype=x.dtype)  # 7 taps
        w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
        w = w / w.sum(1, keepdim=True)  # (B, 7)
        C, H, W = x.shape[1:]
        y = x.reshape(1, B * C, H, W)
        wr = w.repeat_interleave(C, 0)  # (B*C, 7)
        y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="reflect"), wr[:, None, None, :], groups=B * C)
        y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="reflect"), wr[:, None, :, None], groups=B * C)
        return y.reshape(B, C, H, W)
    raise ValueError(f"unknown corruption {kind!r}; use None, 'lowlight' or 'blur'")
