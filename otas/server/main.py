"""Assemble and run a server: model + profile + applications + policy -> engine -> ASGI app -> uvicorn.
Used by `otas serve`; tests call `build` directly with their own small model."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from otas.config import EngineConfig, HttpConfig, SchedulerConfig, ServingConfig
from otas.engine.engine import Engine
from otas.profile.table import Profile, config_warnings
from otas.sched.baselines import Fixed
from otas.sched.policies import make_policy
from otas.sched.scheduler import Scheduler
from otas.server.app import ServeConfig, create_app
from otas.server.metrics import Metrics
from otas.types import App

log = logging.getLogger("otas.server")


def default_max_queue(profile: Profile, apps: Sequence[App], max_batch: int) -> int:
    """Backpressure default: what the device can finish within the loosest SLO at the fastest γ.
    More queued than that cannot all meet their deadlines, so reject (429) at once instead."""
    slo = max((a.slo_ms for a in apps), default=1000.0)  # no applications yet: as if one had a 1 s SLO
    rate = max(profile.throughput(g, max_batch, slo / 2) for g in profile.gammas)  # per second
    return max(max_batch, math.ceil(rate * slo / 1000.0))


def check_servable(runner, profile: Profile, apps: Sequence[App], policy: str) -> None:
    """Refuse, with the fix, a configuration that needs a (task, γ) pair the model cannot serve:
    an application's task the model or profile lacks, a profile claiming pairs the model has no
    prompts for, or a fixed γ an application's task is not served at."""
    missing = sorted(set(profile.gammas) - set(getattr(runner, "gammas", profile.gammas)))
    if missing:
        raise ValueError(f"profile {profile.model!r} has gammas {missing} the model does not serve; profile this model")
    model_pairs = getattr(runner, "servable", None)  # task -> γ the model serves (None: a stand-in runner)
    fixed = make_policy(policy)
    fixed_gamma = fixed.gamma if isinstance(fixed, Fixed) else None
    for a in apps:
        if a.task not in runner.classes:
            raise ValueError(f"app {a.name!r}: the model has no task {a.task!r}; it serves {sorted(runner.classes)}")
        served = profile.servable(a.task)  # raises for a task the profile lacks
        if model_pairs is not None:
            extra = sorted(set(served) - set(model_pairs[a.task]))
            if untrained := sorted(set(extra) & set(getattr(runner, "untrained", {}).get(a.task, ()))):
                raise ValueError(
                    f"app {a.name!r}: the checkpoint holds no trained prompts or head for task {a.task!r} at "
                    f"gammas {untrained} (it would answer with random weights); train them (otas train prompts) "
                    f"or serve it with a profile that leaves them out"
                )
            if extra:
                raise ValueError(
                    f"profile {profile.model!r} lists task {a.task!r} at gammas {extra}, which the model cannot "
                    f"serve (it serves {list(model_pairs[a.task])}); re-profile this model"
                )
        if fixed_gamma is not None and fixed_gamma not in served:
            raise ValueError(
                f"policy {policy!r} cannot serve app {a.name!r}: task {a.task!r} is served at gammas {served}; "
                f"use a fixed γ in that set, or --policy otas"
            )


def make_engine(
    runner,
    profile: Profile,
    apps: Sequence[App],
    policy: str,
    config: SchedulerConfig,
    observer=None,
    engine_cfg: EngineConfig | None = None,
) -> tuple[Engine, dict]:
    """(engine, its `/v1/config` info) for a runner (real, no-op or paced) and its profile; of
    `engine_cfg` only the decoding knobs, the GIL switch interval, `plan_ahead`, `delivery_quantile` and
    `decision_log` are read (the runner is already built)."""
    check_servable(runner, profile, apps, policy)
    sched = Scheduler(apps, profile, policy, config)
    e = engine_cfg or EngineConfig()
    engine = Engine(
        sched, runner, observer=observer, decode_workers=e.decode_workers, decode_limits=e.decode_limits(),
        decode_queue=e.decode_queue, decode_processes=e.decode_processes, switch_interval_s=e.switch_interval_ms / 1e3,
        plan_ahead=plans_ahead(runner, e.plan_ahead), delivery_quantile=e.delivery_quantile,
        decision_log=e.decision_log or None,
    )  # fmt: skip
    info = {
        "policy": sched.policy.name,
        "scheduler": asdict(config),
        "apps": [asdict(a) for a in apps],
        "profile": profile.to_dict(),
        "device": str(getattr(runner, "device", "none")),
        "mode": getattr(runner, "mode", "none"),
        "plan_ahead": engine.plan_ahead,
        "pipelined": bool(getattr(runner, "pipelined", False)),
        "delivery_quantile": e.delivery_quantile,
    }
    return engine, info


def plans_ahead(runner, setting: bool | None) -> bool:
    """`EngineConfig.plan_ahead` for this runner: as set, else on unless its device is a CPU."""
    if setting is not None:
        return setting
    device = str(getattr(runner, "device", "cpu"))
    return not (device.startswith("cpu") or "(cpu" in device)


def check_policy(name: str) -> None:
    """ValueError, with the fix, for a policy name `otas serve` cannot run (unknown, or an offline bound)."""
    if make_policy(name).offline:  # (an unknown name raises, listing the valid ones)
        raise ValueError(
            f"policy {name!r} is an offline bound (it knows every arrival in advance) and cannot serve; "
            f"compare with it in `otas simulate --policies otas,{name}`"
        )


def check_host(host: str, ports: Sequence[int] = ()) -> None:
    """ValueError, with the fix, unless this machine can listen on `host` (an address or a name), and on each
    of `ports` there (0: any port; not checked) that no other process holds."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host[:100]!r} is not an address or a name this machine resolves ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(
                f"--host {host[:100]!r}: cannot listen there ({e.strerror or e}); use an address of this machine, "
                "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
            ) from None
    for port in (p for p in ports if p):
        # the family the servers bind with (`workers.bind`, uvicorn): IPv6 only for an address with a colon
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind (a closed one's TIME_WAIT)
            try:
                s.bind((host, port))
            except OSError as e:
                why = {
                    errno.EADDRINUSE: "another process holds it: stop it, or pick another with --port / --grpc-port",
                    errno.EACCES: "not permitted (ports below 1024 need privileges): pick another",
                }.get(e.errno, "pick another with --port / --grpc-port")
                raise ValueError(f"port {port} on {host[:100]!r}: cannot listen ({e.strerror or e}); {why}") from None


def build(
    runner,
    profile: Profile,
    apps: Sequence[App],
    policy: str,
    config: SchedulerConfig,
    max_body_bytes: int = 8 << 20,
    grpc_port: int | None = None,
    host: str = "127.0.0.1",
    grace_s: float = 5.0,
    engine_cfg: EngineConfig | None = None,
    http: HttpConfig | None = None,
    admin_token: str = "",
    apps_file: Path | None = None,
):
    """(Starlette app, engine) for a runner (real or no-op) and its profile; with `grpc_port` (0:
    any free port) the app's lifespan also serves the gRPC API on `host`. `http`: the connection
    and body limits (its host, ports and max_body_mb are not read here). `admin_token`: turns on
    POST/PUT/DELETE /v1/apps, persisted to `apps_file`."""
    engine, info = make_engine(runner, profile, apps, policy, config, engine_cfg=engine_cfg)
    serve_cfg = ServeConfig(
        model_name=profile.model, max_body_bytes=max_body_bytes, info=info, grpc_port=grpc_port, grpc_host=host,
        grpc_grace_s=grace_s, http=http or HttpConfig(), admin_token=admin_token, apps_file=apps_file,
    )  # fmt: skip
    metrics = Metrics(profile.gammas)
    metrics.watch_delivery(lambda: engine.delivery.ms)
    return create_app(engine, serve_cfg, metrics), engine


def check_profile_arch(profile: Profile, checkpoint) -> None:
    """ValueError, with the fix, if the profile was measured on another architecture than the
    checkpoint's (the scheduler would plan with another model's latencies and accuracies)."""
    from otas.models.checkpoint import read_header

    measured, arch = profile.meta.get("arch"), read_header(checkpoint).get("arch")
    if measured is not None and arch is not None and measured != arch:
        raise ValueError(
            f"profile {profile.model!r} was measured on a {measured} model, but the checkpoint {checkpoint} is a "
            f"{arch}; profile this model (otas profile {checkpoint}) or give its own profile"
        )


def load_runner(cfg: ServingConfig):
    """(runner, profile) of a serving config: the model through its fast path, or the no-op model."""
    apps, sched, eng = cfg.apps, cfg.scheduler, cfg.engine
    if eng.noop:
        from otas.engine.noop import NoopRunner, PacedRunner, noop_profile

        noop = NoopRunner(apps, max_batch=sched.max_batch)
        if eng.paced:  # the profiled device's latency per batch, slept: the host side at that device's speed
            profile = Profile.load(cfg.profile)
            return PacedRunner(noop, profile), profile
        return noop, noop_profile(apps, sched.max_batch)
    import torch

    from otas.engine.runner import Runner
    from otas.predict import default_model_path

    if eng.torch_threads:
        torch.set_num_threads(eng.torch_threads)
    profile = Profile.load(cfg.profile)
    dt = getattr(torch, eng.dtype) if eng.dtype else None
    ckpt = cfg.model or default_model_path()
    check_profile_arch(profile, ckpt)
    # the merge schedule the profile was measured with: its accuracies and latencies are that schedule's
    runner = Runner.load(ckpt, eng.device, dt, sched.max_batch, eng.mode, merge_every=profile.merge_every)
    # launching ahead needs a batch planned behind the running one to launch (`Engine.plan_ahead`)
    runner.pipeline = eng.launch_ahead and plans_ahead(runner, eng.plan_ahead)
    log.info("merge schedule", extra={"event": "merge_every", "merge_every": runner.model.config.merge_every})
    # traced runs eager's kernels, but without Python between them: 0.5-0.8x eager's time at batches of 1 on a
    # 2-core CPU (profiles/vit_tiny_p2_c5__cpu{,-eager}.json), so a profile of one does not predict the other
    if profile.meta.get("mode", runner.mode) != runner.mode:
        log.warning(
            "profile timed another path",
            extra={"event": "profile_mode", "profile_mode": profile.meta.get("mode"), "runner_mode": runner.mode},
        )
    served = runner.served_profile(profile)
    if served.buckets != profile.buckets:
        log.info(
            "profile read at the served batch sizes",
            extra={"event": "profile_buckets", "profile_buckets": profile.buckets, "served_buckets": served.buckets},
        )
    if eng.warmup:
        runner.warmup()
    return runner, served


def serve(cfg: ServingConfig) -> None:
    """Load everything and run uvicorn (and gRPC, unless cfg.http.grpc_port is 0) until SIGINT/SIGTERM
    (graceful: requests in flight on either API and queued requests are served)."""
    from otas.server import memory
    from otas.server.connections import make_server
    from otas.server.logs import setup_logging

    setup_logging(cfg.http.log_level)
    # before the model loads: a typo'd address, a port in use or an unknown policy is the first thing to hear of
    check_host(cfg.http.host, (cfg.http.port, cfg.http.grpc_port))
    check_policy(cfg.policy)
    memory.tune()
    runner, profile = load_runner(cfg)
    apps = cfg.apps
    config = replace(
        cfg.scheduler, max_queue=cfg.engine.max_queue or default_max_queue(profile, apps, cfg.scheduler.max_batch)
    )
    host, port, grpc_port = cfg.http.host, cfg.http.port, cfg.http.grpc_port
    grace_s = max(5.0, 4 * max((a.slo_ms for a in apps), default=1000.0) / 1000.0)
    app, engine = build(
        runner, profile, apps, cfg.policy, config, cfg.http.max_body_bytes, grpc_port=grpc_port or None, host=host,
        grace_s=grace_s, engine_cfg=cfg.engine, http=cfg.http, admin_token=cfg.admin_token, apps_file=cfg.apps_file,
    )  # fmt: skip
    app.state.config.start_parser = True
    for line in config_warnings(apps, [profile]):
        log.warning(line, extra={"event": "config_warning"})
    memory.freeze_heap()  # OPTIMIZATION: full collections never scan the model and the libraries again

    def started(bound_port: int) -> None:  # the port bound (`--port 0` picks a free one)
        log.info(
            "serving",
            extra={"event": "serve", "url": f"http://{host}:{bound_port}",
                   "grpc": f"{host}:{grpc_port}" if grpc_port else None, "model": profile.model, "policy": cfg.policy,
                   "device": cfg.engine.device, "mode": getattr(runner, "mode", "none"), "max_queue": config.max_queue,
                   "apps": [a.name for a in apps], "http_workers": cfg.http.workers},
        )  # fmt: skip

    if cfg.http.workers:
        serve_workers(cfg, app, runner, grace_s, started)
        return
    make_server(app, host, port, timeout_graceful_shutdown=grace_s, on_started=started).run()


def serve_workers(cfg: ServingConfig, app, runner, grace_s: float, started) -> None:
    """`serve` with HTTP in `cfg.http.workers` front-end processes (`otas.server.workers`)."""
    import asyncio

    from otas.server.workers import WorkerSpec, bind, run_engine_process

    sock = bind(cfg.http.host, cfg.http.port, probe=True)  # held, not listened on: the front ends listen
    if cfg.engine.decode_processes:
        log.warning(
            "--decode-processes is not used with --http-workers: each front end decodes in its own threads",
            extra={"event": "config_warning"},
        )
    app.state.config.start_parser = False  # JSON bodies are parsed in the front ends
    front = replace(
        app.state.config, info=None, grpc_port=None, start_parser=False, admin_token="", apps_file=None,
        http=replace(app.state.config.http, json_workers=0),  # a front end parses on its own loop: it is a process
    )  # fmt: skip
    spec = WorkerSpec(
        "", front, replace(cfg.engine, decode_processes=False), cfg.http.log_level, drain_s=grace_s,
        ring_bytes=cfg.http.max_inflight_bytes,
    )  # fmt: skip
    pre = getattr(runner, "preprocess", None)
    stop_s = cfg.http.drain_s + grace_s + 10.0
    asyncio.run(run_engine_process(app, cfg.http.workers, sock, spec, pre.to_dict() if pre else None, stop_s, started))
