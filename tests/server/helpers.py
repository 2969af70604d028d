"""Shared by the engine, server and bench tests: a tiny random checkpoint, a runner paced to a
hand-made profile (so latencies are known), applications, and a server on loopback."""

from __future__ import annotations

import base64
import contextlib
import io
import time

import numpy as np
from PIL import Image

from otas.config import EngineConfig, HttpConfig, SchedulerConfig
from otas.data.tasks import NOVEL_CLASSES, SOURCE_CLASSES
from otas.profile.table import Profile
from otas.types import App

GAMMAS = (-4, 0, 4)
SPEED = {-4: 0.6, 0: 1.0, 4: 1.1}
ACC = {-4: 0.80, 0: 0.85, 4: 0.90}
APPS = [App("novel", 400.0, 1.0, "novel"), App("lowlight", 800.0, 2.0, "lowlight"), App("blur", 1600.0, 1.0, "blur")]
SIZE = 16
MAX_BODY = 64 * 1024


def tiny_checkpoint(path) -> None:
    import torch

    from otas.adapt import AdaptConfig, AdaptiveViT
    from otas.models.checkpoint import save_checkpoint
    from otas.models.registry import build_vit

    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=SIZE, depth=2)
    m = AdaptiveViT(vit, AdaptConfig(gammas=GAMMAS, tasks={"novel": 5, "lowlight": 5, "blur": 5}), SOURCE_CLASSES)
    m.task_classes = {"novel": NOVEL_CLASSES, "lowlight": SOURCE_CLASSES, "blur": NOVEL_CLASSES}
    save_checkpoint(m, path)


def paced_profile(base_ms: float = 50.0, per_image_ms: float = 10.0, max_batch: int = 16) -> Profile:
    lat = {
        g: {1: (base_ms + per_image_ms) * s, max_batch: (base_ms + per_image_ms * max_batch) * s}
        for g, s in SPEED.items()
    }
    return Profile(
        model="tiny_test",
        device="cpu (paced)",
        dtype="float32",
        gammas=list(GAMMAS),
        batch_sizes=[1, max_batch],
        accuracy={t: dict(ACC) for t in ("source", "novel", "lowlight", "blur")},
        latency_ms=lat,
    )


class PacedRunner:
    """A real runner whose batches take exactly the profile's latency (sleeps the rest), so the
    scheduler's predictions hold and tests are deterministic. `fail` makes every batch raise."""

    def __init__(self, runner, profile: Profile, fail: bool = False):
        self.inner, self.profile, self.fail = runner, profile, fail
        self.image_size, self.max_batch, self.classes = runner.image_size, runner.max_batch, runner.classes
        self.gammas = runner.gammas
        self.sizes: list[int] = []

    def run(self, images, tasks, gamma):
        t0 = time.perf_counter()
        if self.fail:
            raise RuntimeError("device on fire")
        out = self.inner.run(images, tasks, gamma)
        self.sizes.append(len(images))
        rest = self.profile.lat(gamma, len(images)) / 1e3 - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
        return out


def png(seed: int = 0, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int = 0, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def b64png(seed: int = 0, size: int = SIZE) -> str:
    return base64.b64encode(png(seed, size)).decode()


def infer_body(app: str = "novel", n: int = 1) -> dict:
    return {
        "parameters": {"app": app},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [n], "data": [b64png(i) for i in range(n)]}],
    }


@contextlib.contextmanager
def serving(
    runner, profile: Profile, policy: str = "otas", apps=APPS, max_queue: int = 0, grpc: bool = False,
    http: HttpConfig | None = None, engine_cfg: EngineConfig | None = None, max_body: int = MAX_BODY,
    grace_s: float = 5.0, **cfg,
):  # fmt: skip
    """(ServerThread, engine) on an ephemeral loopback port (and gRPC on another, at
    `srv.grpc_target`, with `grpc=True`); stopped (gracefully, without draining unless `http` says
    so) on exit."""
    from otas.server.app import ServerThread
    from otas.server.main import build, default_max_queue

    config = SchedulerConfig(max_batch=runner.max_batch, **cfg)
    config.max_queue = max_queue or default_max_queue(profile, apps, config.max_batch)
    app, engine = build(
        runner, profile, apps, policy, config, max_body_bytes=max_body, grpc_port=0 if grpc else None,
        engine_cfg=engine_cfg, http=http or HttpConfig(drain_s=0.0), grace_s=grace_s,
    )  # fmt: skip
    with ServerThread(app) as srv:
        yield srv, engine


def requests_total(url: str, outcome: str | None = None, reason: str | None = None) -> float:
    """`otas_requests_total` from the server's /metrics, over every app, of one outcome and reason
    (None: any)."""
    import re

    import httpx

    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        m = re.match(r'otas_requests_total\{app="[^"]*",outcome="([^"]*)",reason="([^"]*)"\} (\S+)', line)
        if m and outcome in (None, m[1]) and reason in (None, m[2]):
            total += float(m[3])
    return total


@contextlib.contextmanager
def server_process(ckpt, base_ms: float, per_image_ms: float, http: dict | None = None):
    """The server in its own process (its own GIL, as in production), on a free loopback port;
    `http`: HttpConfig fields. Yields (url, Popen); SIGTERM and wait on exit."""
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from otas.bench.local_server import free_port, wait_ready

    port = free_port()
    cmd = [sys.executable, "-m", "tests.server.paced_server", str(ckpt), str(port), str(base_ms), str(per_image_ms)]
    if http is not None:
        cmd.append(json.dumps(http))
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=60, every_s=0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _run_coroutine(fn, args):
    import asyncio

    return asyncio.run(fn(*args))


def in_client_process(fn, *args, timeout_s: float = 120.0):
    """`asyncio.run(fn(*args))` in a fresh interpreter, as a real client is: timing-sensitive load
    must not share this process's GIL and heap (after a few hundred tests a garbage collection of
    the pytest process alone can hold an event loop for a good part of a second). `fn` must be a
    module-level coroutine function; its arguments and result are pickled."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_coroutine, fn, args).result(timeout_s)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
