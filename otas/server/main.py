"""Assemble and run a server: model + profile + applications + policy -> engine -> ASGI app -> uvicorn.
Used by `otas serve`; tests call `build` directly with their own small model."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from otas.config import SchedulerConfig
from otas.engine.engine import Engine
from otas.profile.table import Profile
from otas.sched.scheduler import Scheduler
from otas.server.app import ServeConfig, create_app
from otas.server.metrics import Metrics
from otas.types import App

log = logging.getLogger("otas.server")


def default_max_queue(profile: Profile, apps: Sequence[App], max_batch: int) -> int:
    """Backpressure default: what the device can finish within the loosest SLO at the fastest γ.
    More queued than that cannot all meet their deadlines, so reject (429) at once instead."""
    slo = max(a.slo_ms for a in apps)
    rate = max(profile.throughput(g, max_batch, slo / 2) for g in profile.gammas)  # per second
    return max(max_batch, math.ceil(rate * slo / 1000.0))


def make_engine(
    runner,
    profile: Profile,
    apps: Sequence[App],
    policy: str,
    config: SchedulerConfig,
    observer=None,
    decode_workers: int = 2,
) -> tuple[Engine, dict]:
    """(engine, its `/v1/config` info) for a runner (real, no-op or paced) and its profile."""
    missing = sorted(set(profile.gammas) - set(getattr(runner, "gammas", profile.gammas)))
    if missing:
        raise ValueError(f"profile {profile.model!r} has gammas {missing} the model does not serve; profile this model")
    sched = Scheduler(apps, profile, policy, config)
    engine = Engine(sched, runner, observer=observer, decode_workers=decode_workers)
    info = {
        "policy": sched.policy.name,
        "scheduler": asdict(config),
        "apps": [asdict(a) for a in apps],
        "profile": profile.to_dict(),
        "device": str(getattr(runner, "device", "none")),
    }
    return engine, info


def build(
    runner,
    profile: Profile,
    apps: Sequence[App],
    policy: str,
    config: SchedulerConfig,
    max_body_bytes: int = 8 << 20,
    decode_workers: int = 2,
):
    """(Starlette app, engine) for a runner (real or no-op) and its profile."""
    engine, info = make_engine(runner, profile, apps, policy, config, decode_workers=decode_workers)
    serve_cfg = ServeConfig(model_name=profile.model, max_body_bytes=max_body_bytes, info=info)
    return create_app(engine, serve_cfg, Metrics(profile.gammas)), engine


def serve(
    model: Path | None,
    profile_path: Path | None,
    apps: Sequence[App],
    policy: str,
    device: str,
    host: str,
    port: int,
    config: SchedulerConfig,
    max_body_bytes: int,
    noop: bool = False,
    warmup: bool = True,
    log_level: str = "info",
    dtype: str = "",
    max_queue: int = 0,
) -> None:
    """Load everything and run uvicorn until SIGINT/SIGTERM (graceful: queued requests are served).
    max_queue 0 = `default_max_queue`."""
    import uvicorn

    from otas.server.app import setup_logging

    setup_logging(log_level)
    if noop:
        from otas.engine.noop import NoopRunner, noop_profile

        runner, profile = NoopRunner(apps, max_batch=config.max_batch), noop_profile(apps, config.max_batch)
    else:
        import torch

        from otas.engine.runner import Runner
        from otas.predict import default_model_path

        if profile_path is None:
            raise ValueError("give --profile PATH: the latency/accuracy profile of this model on this device")
        profile = Profile.load(profile_path)
        dt = getattr(torch, dtype) if dtype else None
        runner = Runner.load(model or default_model_path(), device, dt, config.max_batch)
        if warmup:
            runner.warmup()
    config = replace(config, max_queue=max_queue or default_max_queue(profile, apps, config.max_batch))
    app, engine = build(runner, profile, apps, policy, config, max_body_bytes)
    log.info(
        "serving",
        extra={"event": "serve", "url": f"http://{host}:{port}", "model": profile.model, "policy": policy,
               "device": device, "max_queue": config.max_queue, "apps": [a.name for a in apps]},
    )  # fmt: skip
    slo = max(a.slo_ms for a in apps) / 1000.0
    uvicorn.run(
        app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=max(5.0, 4 * slo)
    )
