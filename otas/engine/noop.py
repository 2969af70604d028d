"""A no-op model for measuring the server itself: HTTP + scheduling + collation, no forward.

`NoopRunner` has the runner's interface and collates into a preallocated buffer exactly like the
real one, then returns uniform probabilities. `noop_profile` gives the scheduler a flat, tiny
latency table so that it batches and never rejects for lateness. No torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from otas.collate import collate
from otas.engine.batches import RunResult
from otas.profile.table import Profile
from otas.types import App

NOOP_MS = 0.05
TASKS = ("source", "novel", "lowlight", "blur")
"""What the no-op model serves besides its applications' tasks: the shipped model's, so a server
started with no application (the admin API on) can register some."""


def noop_tasks(apps: Sequence[App]) -> list[str]:
    return sorted(set(TASKS) | {a.task for a in apps})


class NoopRunner:
    def __init__(self, apps: Sequence[App], image_size: int = 32, max_batch: int = 64, num_classes: int = 5):
        self.image_size, self.max_batch, self.gammas = image_size, max_batch, [0]
        self.classes = {t: [f"class{i}" for i in range(num_classes)] for t in noop_tasks(apps)}
        self._np = np.empty((max_batch, image_size, image_size, 3), np.uint8)
        self._probs = np.full((max_batch, num_classes), 1.0 / num_classes, np.float32)

    def run(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int):
        t0 = time.perf_counter()
        b = len(images)
        collate(images, self._np)
        return RunResult(self._probs[:b].copy(), (time.perf_counter() - t0) * 1e3)

    def warmup(self, batch_sizes: Sequence[int] = ()) -> None:
        pass

    def served_profile(self, profile: Profile) -> Profile:
        """`profile` as served here (`Runner.served_profile`): as it is, this path pads to no buckets of its own."""
        return profile


class PacedRunner:
    """The no-op runner, slowed to the profile's latency per batch: a stand-in for the profiled
    device that needs no accelerator (the sleep leaves the CPU and the GIL free, as a device's wait
    does), so the server's host side can be measured at that device's speed on any machine."""

    def __init__(self, inner: NoopRunner, profile: Profile):
        self.inner = inner
        self.profile = profile.for_max_batch(inner.max_batch)  # a padded path's last bucket is its B_max
        self.image_size, self.max_batch, self.classes = inner.image_size, inner.max_batch, inner.classes
        self.gammas = list(profile.gammas)
        self.device = f"paced no-op ({profile.device})"

    def run(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int):
        t0 = time.perf_counter()
        out = self.inner.run(images, tasks, gamma)
        rest = self.profile.lat(gamma, len(images)) / 1e3 - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
        out.ms = (time.perf_counter() - t0) * 1e3
        return out

    def warmup(self, batch_sizes: Sequence[int] = ()) -> None:
        pass

    def served_profile(self, profile: Profile) -> Profile:
        """`profile` as served here (`Runner.served_profile`): as it is, this path sleeps the buckets it names."""
        return profile


def noop_profile(apps: Sequence[App], max_batch: int = 64) -> Profile:
    tasks = noop_tasks(apps)
    return Profile(
        model="noop",
        device="none (no-op model)",
        dtype="none",
        gammas=[0],
        batch_sizes=[1, max_batch],
        accuracy={t: {0: 1.0} for t in tasks},
        latency_ms={0: {1: NOOP_MS, max_batch: NOOP_MS * 2}},
        meta={"note": "no-op model for server-overhead benchmarks"},
    )
