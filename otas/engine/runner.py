"""The runner: owns the device and the model, and runs batches through `FastForward`, the very
forward the profiler times (CUDA graphs per (γ, batch bucket) on a GPU, traced per γ on a CPU).

Called from one thread only (the engine's device thread), so the model, the buffers and the CUDA
stream are never shared. A batch is collated into `FastForward`'s preallocated uint8 buffer (pinned
on CUDA, where each graph copies it in and its answer out itself: `FastConfig.host_io`);
normalisation, the forward at γ and every task head run on the device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from otas.adapt import SOURCE, AdaptiveViT
from otas.adapt.fast import DEFAULT_BUCKETS, PER_SHAPE_MODES, FastConfig, FastForward, Launch
from otas.adapt.vit import key
from otas.engine.batches import RunResult
from otas.models.checkpoint import load_checkpoint
from otas.profile.table import Profile


def default_mode(device: str | torch.device) -> str:
    """The fast path for a device: CUDA graphs on a GPU; on a CPU the traced forward, the eager kernels
    run with the GIL released, so the server's Python threads do not slow it (compile is opt-in)."""
    return "graphs" if torch.device(device).type == "cuda" else "traced"


def buckets_for(max_batch: int) -> tuple[int, ...]:
    """The padding buckets up to `max_batch` (the largest is max_batch itself)."""
    return tuple(b for b in DEFAULT_BUCKETS if b < max_batch) + (max_batch,)


def trained_gaps(model: AdaptiveViT) -> dict[str, tuple[int, ...]]:
    """task -> the servable γ whose prompts or head the checkpoint did not hold (`load_checkpoint`
    leaves them at their random initialisation and lists them in `model.untrained`); serving them
    would answer with random heads. A γ ≤ 0 needs the task's γ = 0 head, a γ > 0 its own prompts
    and head."""
    missing = set(getattr(model, "untrained", ()))
    if not missing:
        return {}
    gaps = {}
    for t in model.config.tasks:
        need = {g: key(t, 0 if g <= 0 else g) for g in model.servable(t)}
        if bad := tuple(g for g, k in need.items() if k in missing):
            gaps[t] = bad
    return gaps


class Runner:
    """Runs batches of uint8 (H, W, 3) images on one model and device, through `FastForward`."""

    def __init__(
        self,
        model: AdaptiveViT,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = 64,
        mode: str = "",
        host_io: bool = True,
    ):
        """`host_io`: graphs copy in and out of pinned host buffers themselves (`FastConfig.host_io`; off
        only to measure what it saves)."""
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: use an integer >= 1")
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch = max_batch
        self.mode = mode or default_mode(self.device)
        cfg = FastConfig(self.mode, buckets_for(max_batch), dtype, host_io=host_io)
        self.fast = FastForward(model, self.device, cfg)
        self.model = self.fast.model
        self.preprocess = model.preprocess  # decoding (host) and normalisation (FastForward) read it
        self.image_size = self.preprocess.size
        self.gammas = list(model.config.gammas)
        self.classes = {t: self._labels(t) for t in model.tasks}
        self.untrained = trained_gaps(model)
        self.pipeline = False
        """Whether a caller may launch batches behind the running one where the path allows it (`pipelined`;
        `otas serve --launch-ahead`)."""
        # task -> the γ it is served at: the model's pairs less those the checkpoint holds no weights for
        self.servable = {
            t: tuple(g for g in model.servable(t) if g not in self.untrained.get(t, ())) for t in model.tasks
        }

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        max_batch: int = 64,
        mode: str = "",
        host_io: bool = True,
        merge_every: int | None = None,
    ) -> Runner:
        """`merge_every`: the merge schedule to run (default: the checkpoint's; `load_checkpoint`)."""
        dt = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        model = load_checkpoint(path, "cpu", torch.float32, merge_every=merge_every)
        return cls(model, device, dt, max_batch, mode, host_io)

    def served_profile(self, profile: Profile) -> Profile:
        """`profile` as this runner serves it: padded to its buckets where it runs one graph per
        (γ, bucket), else to none (whatever the file says: the path served decides what a batch costs)."""
        return profile.with_buckets(self.fast.cfg.buckets if self.mode in PER_SHAPE_MODES else None)

    def _labels(self, task: str) -> list[str]:
        model = self.fast.model
        if task == SOURCE:
            return model.source_classes or [str(i) for i in range(model.vit.num_classes)]
        return model.task_classes.get(task) or [str(i) for i in range(model.num_classes(task))]

    def run(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int) -> RunResult:
        """Images (each (H, W, 3) uint8) and one task per image -> probabilities, at γ."""
        if self.pipelined:  # through a slot, so it never writes buffers a launched batch still reads
            return self.launch(images, tasks, gamma)()
        self._check_batch(images, tasks)
        t0 = time.perf_counter()
        probs = self.forward(images, tasks, gamma)
        return RunResult(probs, (time.perf_counter() - t0) * 1e3)

    def forward(
        self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, tasks: str | Sequence[str], gamma: int
    ) -> np.ndarray:
        """uint8 images ((H, W, 3) arrays, or (B, H, W, 3) host array or tensor), B ≤ max_batch ->
        probabilities (B, K) as float32 numpy; ValueError for a (task, γ) the checkpoint holds no trained
        weights for."""
        self._check_trained(tasks, gamma)
        return self.fast.predict_host(images, gamma, tasks)  # waits for the device

    @property
    def pipelined(self) -> bool:
        """Whether `launch` queues a batch behind the running one (CUDA graphs with host I/O), so a
        caller may launch the next before waiting for this one."""
        return self.pipeline and self.fast.launches_ahead

    @property
    def slots(self) -> int:
        """Batches `launch` holds on the device at once; a launch past them waits for one to be read."""
        return self.fast.SLOTS

    def captures(self, gamma: int, b: int) -> bool:
        """Whether `launch` of a batch of `b` at γ would first wait for every launched batch to be read (to
        capture its graphs; warm-up does so before serving)."""
        return 1 <= b <= self.max_batch and self.fast.captures(gamma, b)  # (a bad batch: `launch` says why)

    def launch(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int) -> Launch[RunResult]:
        """`run` in two halves (`FastForward.launch`): the batch staged and queued on the device now; the
        handle says whether the device is done with it (`ready`, never blocking) and, called once from any
        thread, waits for it. Its `RunResult.ms` is the device's time on it, from when the device took it up
        (after the batch before) to its answer copied out, not the wait behind the batch before it."""
        self._check_batch(images, tasks)
        self._check_trained(tasks, gamma)
        launched = self.fast.launch(images, gamma, tasks)

        def result() -> RunResult:
            probs, ms = launched()
            return RunResult(probs, ms)

        return Launch(launched.ready, result)

    def _check_batch(self, images: Sequence[np.ndarray], tasks: Sequence[str]) -> None:
        """ValueError for a batch of no images, more than `max_batch`, or not one task per image."""
        b = len(images)
        if not 1 <= b <= self.max_batch or len(tasks) != b:
            raise ValueError(f"batch of {b} images and {len(tasks)} tasks; need 1..{self.max_batch} of each")

    def _check_trained(self, tasks: str | Sequence[str], gamma: int) -> None:
        """ValueError for a (task, γ) the checkpoint holds no trained weights for."""
        if self.untrained:
            for t in {tasks} if isinstance(tasks, str) else set(tasks):
                if gamma in self.untrained.get(t, ()):
                    raise ValueError(
                        f"task {t!r} is not trained at gamma={gamma} in this checkpoint (no prompts or head); "
                        f"it is served at {list(self.servable[t])}"
                    )

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """One forward per (γ, batch size) before serving: in the per-shape modes (graphs, compile) every
        bucket, so each graph is captured before the first request; eager and traced (one trace per γ,
        made here, serves every batch size) batch 1 and 8 (allocation, kernel choice)."""
        sizes = batch_sizes or (self.fast.cfg.buckets if self.mode in PER_SHAPE_MODES else (1, 8))
        img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        for g in self.gammas:
            t = next((t for t in self.classes if t != SOURCE and g in self.servable[t]), None)
            t = t or (SOURCE if g in self.servable[SOURCE] else None)
            if t is None:  # no task is served at g: it never runs
                continue
            for b in sizes:
                b = min(b, self.max_batch)
                self.run([img] * b, [t] * b, g)  # (launching ahead: every slot's graph, `FastForward.launch`)
