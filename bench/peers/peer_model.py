"""What every peer serves: the shipped model through otas's own `Runner` (the `FastForward` the
profile timed), at one fixed γ chosen at start, or the no-op runner for overhead figures.

A peer hands `classify` the encoded images and application names of one batch; decoding is the
same size- and format-checked decode otas uses, so the peers differ from otas in serving only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from otas.config import default_apps_path, load_apps
from otas.engine.images import decode_image

THREADS = os.cpu_count() or 1
"""Intra-op threads of every server's forward: the machine's cores, torch's own default, which otas
runs with. Set explicitly, since Ray sets OMP_NUM_THREADS to an actor's CPU count."""


class PeerModel:
    def __init__(self, gamma: int, max_batch: int, noop: bool = False, apps: Path | None = None):
        self.apps = load_apps(apps or default_apps_path("cpu"))
        self.task = {a.name: a.task for a in self.apps}
        self.gamma, self.max_batch = int(gamma), max_batch
        if noop:
            from otas.engine.noop import NoopRunner

            self.runner = NoopRunner(self.apps, max_batch=max_batch)
        else:
            import torch

            from otas.engine.runner import Runner
            from otas.predict import default_model_path

            torch.set_num_threads(THREADS)
            self.runner = Runner.load(default_model_path(), "cpu", max_batch=max_batch)
            bad = [t for t in set(self.task.values()) if self.gamma not in self.runner.servable[t]]
            if bad:
                raise ValueError(f"gamma={gamma} is not servable for tasks {bad}; pick one of {self.runner.gammas}")
            self.runner.warmup((1, min(8, max_batch)))

    def classify(self, images: Sequence[bytes], apps: Sequence[str]) -> list[str]:
        """Encoded images and their application names -> one label each, at the fixed γ."""
        size = self.runner.image_size
        labels: list[str] = []
        for s in range(0, len(images), self.max_batch):  # a peer may hand over more than max_batch
            chunk = [decode_image(b, size) for b in images[s : s + self.max_batch]]
            tasks = [self.task[a] for a in apps[s : s + self.max_batch]]
            probs = self.runner.run(chunk, tasks, self.gamma).probs
            labels += [self.runner.classes[t][int(p.argmax())] for t, p in zip(tasks, probs, strict=True)]
        return labels


def peer_args(description: str) -> argparse.ArgumentParser:
    """The command line every peer shares: port, γ, the batching knobs, the no-op switch."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=8100, help="HTTP port")
    p.add_argument("--gamma", type=int, default=0, help="the fixed γ served (0 = the stock model)")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch the batcher forms")
    p.add_argument("--delay-ms", type=float, default=10.0, help="how long the batcher waits to fill a batch")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before 503")
    p.add_argument("--apps", type=Path, default=None, help="applications YAML (default: otas/configs/apps.yaml)")
    p.add_argument("--noop", action="store_true", help="no model: the server's own overhead")
    return p


def queue_budget_ms(apps, gamma: int, max_batch: int, noop: bool = False) -> dict[str, float]:
    """Per application, how long a request may wait in a queue and still meet its SLO: the SLO less
    one full batch at this γ from the shipped CPU profile (at least a tenth of the SLO)."""
    if noop:
        return {a.name: float(a.slo_ms) for a in apps}
    from otas.profile.table import Profile
    from otas.sim.demo import default_profile_path

    batch_ms = Profile.load(default_profile_path()).lat(gamma, max_batch)
    return {a.name: max(a.slo_ms - batch_ms, a.slo_ms / 10) for a in apps}
