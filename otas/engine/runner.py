"""The runner: owns the device and the model; called from one thread only (the engine's device
thread), so the model, the buffers and the CUDA stream are never shared.

A batch is collated into a preallocated uint8 buffer (pinned on CUDA so the host->device copy is
asynchronous), normalised on the device and run at the plan's γ with one task per image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from otas.adapt import SOURCE, AdaptiveViT
from otas.data.transforms import normalize, to_float
from otas.engine.engine import RunResult
from otas.models.checkpoint import load_checkpoint


class Runner:
    """Runs batches of uint8 (H, W, 3) images on one model and device."""

    def __init__(
        self, model: AdaptiveViT, device: str = "cpu", dtype: torch.dtype = torch.float32, max_batch: int = 64
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: use an integer >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype).eval()
        self.dtype = dtype
        self.max_batch = max_batch
        self.image_size = int(model.vit.patch_embed.img_size[0])
        self.gammas = list(model.config.gammas)
        self.classes = {t: self._labels(t) for t in model.tasks}
        cuda = self.device.type == "cuda"
        # OPTIMIZATION: one buffer for the largest batch, pinned on CUDA, so collation is a copy
        # into fixed memory and the upload overlaps nothing else on the stream.
        self._buf = torch.empty((max_batch, self.image_size, self.image_size, 3), dtype=torch.uint8, pin_memory=cuda)
        self._np = self._buf.numpy()

    @classmethod
    def load(
        cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, max_batch: int = 64
    ) -> Runner:
        dt = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        return cls(load_checkpoint(path, "cpu", torch.float32), device, dt, max_batch)

    def _labels(self, task: str) -> list[str]:
        if task == SOURCE:
            return self.model.source_classes or [str(i) for i in range(self.model.vit.num_classes)]
        return self.model.task_classes.get(task) or [str(i) for i in range(self.model.num_classes(task))]

    @torch.inference_mode()
    def run(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int) -> RunResult:
        """Images (each (H, W, 3) uint8) and one task per image -> probabilities, at γ."""
        b = len(images)
        if not 1 <= b <= self.max_batch or len(tasks) != b:
            raise ValueError(f"batch of {b} images and {len(tasks)} tasks; need 1..{self.max_batch} of each")
        t0 = time.perf_counter()
        np.stack(images, out=self._np[:b])  # (B, H, W, 3) collation into the preallocated buffer
        x = self._buf[:b].to(self.device, non_blocking=True)
        x = normalize(to_float(x)).to(self.dtype)  # (B, 3, H, W)
        probs = self.model(x, gamma, list(tasks)).float().softmax(-1).cpu().numpy()  # syncs the device
        return RunResult(probs, (time.perf_counter() - t0) * 1e3)

    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """One forward per (γ, batch size): first calls pay allocation and kernel selection."""
        img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        task = next(iter(self.model.config.tasks), SOURCE)
        for g in self.gammas:
            for b in batch_sizes:
                b = min(b, self.max_batch)
                self.run([img] * b, [task] * b, g)
