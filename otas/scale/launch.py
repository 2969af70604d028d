"""`otas serve --backend ray`: connect to (or start) Ray, deploy the replicas and the router with
Ray Serve, serve until SIGINT/SIGTERM, then delete the application (replicas drain first)."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from dataclasses import replace

from otas.config import ServingConfig
from otas.profile.table import Profile
from otas.scale.replica import ReplicaSpec

log = logging.getLogger("otas.scale")

LOCAL_RAY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Serve's lean request path: 41 vs 301 ms p50 at 122 requests/s on the 2-core test machine
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # that mode serves HTTP from the router replica itself, which on shutdown stays up this long
    # for external load balancers to deregister it (Serve's default: 30 s)
    "RAY_worker_niceness": "0",
    # Ray starts workers at niceness 15; here they *are* the server, so they get a fair share of
    # the CPU beside anything else on the machine (a load generator, say)
}
"""Set (unless already set) for a local Ray instance started by `otas serve`; on a cluster, export
them before `ray start` on every node (docs/scaling.md)."""


def make_spec(cfg: ServingConfig) -> ReplicaSpec:
    """What every replica builds, resolved here (in the driver) so bad options fail once, early."""
    from otas.server.main import default_max_queue

    apps, eng, config = cfg.apps, cfg.engine, cfg.scheduler
    if eng.paced and cfg.profile is None:
        raise ValueError("--paced emulates a profiled device with the no-op model: give --noop and --profile P")
    if eng.noop and not eng.paced:
        from otas.engine.noop import noop_profile

        profile = noop_profile(apps, config.max_batch)
    else:
        profile = Profile.load(cfg.profile)
    config = replace(config, max_queue=eng.max_queue or default_max_queue(profile, apps, config.max_batch))
    return ReplicaSpec(
        apps=list(apps), profile=profile.to_dict(), policy=cfg.policy, scheduler=config,
        model=None if cfg.model is None else str(cfg.model), device=eng.device, dtype=eng.dtype, noop=eng.noop,
        paced=eng.paced, warmup=eng.warmup, decode=eng,
    )  # fmt: skip


def check_resources(spec: ReplicaSpec, replicas: int) -> None:
    """Refuse, with the fix, a replica count the cluster cannot place (Serve would wait forever)."""
    import ray

    have = ray.cluster_resources()
    kind = "GPU" if spec.device.startswith("cuda") else "CPU"
    n = math.floor(have.get(kind, 0))
    if replicas > n:
        raise ValueError(
            f"--replicas {replicas} needs {replicas} {kind}s (one per replica) but the Ray cluster has {n}; "
            f"use --replicas {max(n, 1)} or add nodes (ray start --address HEAD:6379 on each)"
        )


def deploy(
    spec: ReplicaSpec,
    replicas: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str = "",
    max_body_bytes: int = 8 << 20,
    log_level: str = "info",
    num_cpus: int | None = None,
    on_signal=None,
    **build_kwargs,
) -> str:
    """Start (or join) Ray and Serve, deploy, wait until the HTTP API is ready; returns its URL.

    address: "" = a new local Ray instance; "auto" = the one `ray start --head` runs here;
    "HOST:6379" or "ray://HOST:10001" = an existing cluster.
    """
    import ray
    from ray import serve

    from otas.scale.deployment import APP_NAME, build_app, wait_ready

    if not ray.is_initialized():
        if not address:
            for k, v in LOCAL_RAY_ENV.items():
                os.environ.setdefault(k, v)  # the raylet, and so every worker, inherits them
        # "local": a new instance even if `ray start` runs one here (that one is --address auto)
        kw = {"address": address} if address else {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
        ray.init(**kw, logging_level=logging.WARNING, log_to_driver=log_level == "debug")
    if on_signal is not None:  # ray.init installs its own SIGTERM handler (it aborts): ours again
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    check_resources(spec, replicas)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(spec, replicas, max_body_bytes, log_level=log_level, **build_kwargs)
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_ready(url)
    return url


def shutdown(address: str = "") -> None:
    """Delete the application (graceful: replicas serve what they queued); stop Ray if we started it."""
    import ray

    if not ray.is_initialized():
        return
    from ray import serve

    from otas.scale.deployment import APP_NAME

    try:
        serve.delete(APP_NAME)
    finally:
        if not address:
            serve.shutdown()
            ray.shutdown()


def serve_ray(cfg: ServingConfig) -> None:
    """Deploy and serve until SIGINT/SIGTERM."""
    from otas.server.logs import setup_logging

    spec = make_spec(cfg)
    replicas, address, log_level = cfg.ray.replicas, cfg.ray.address, cfg.http.log_level
    host, port, max_body_bytes = cfg.http.host, cfg.http.port, cfg.http.max_body_bytes

    setup_logging(log_level)
    from otas.server.main import check_host

    check_host(host)  # before Ray starts: a typo'd address is the first thing to hear of
    if cfg.http.grpc_port:
        log.warning(
            "no gRPC with the ray backend",
            extra={"event": "grpc_off", "grpc_port": cfg.http.grpc_port, "why": "the Ray front end serves HTTP only"},
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(spec, replicas, host, port, address, max_body_bytes, log_level, on_signal=lambda *_: stop.set())
    except BaseException:
        shutdown(address)
        raise
    log.info(
        "serving",
        extra={"event": "serve", "url": url, "backend": "ray", "replicas": replicas, "address": address or "local",
               "model": Profile.from_dict(spec.profile).model, "policy": spec.policy, "device": spec.device,
               "max_queue_per_replica": spec.scheduler.max_queue, "apps": [a.name for a in spec.apps]},
    )  # fmt: skip
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down", extra={"event": "stop"})
        shutdown(address)
