"""The Ray Serve deployments: N engine replicas and the router that serves HTTP in front of them.

Each engine replica is its own one-replica deployment (`otas-replica-<i>`), so the router holds a
handle per replica and chooses among them itself (`router.py`): Serve's own handle routing picks a
replica by queue length alone, which would scatter every SLO class over every replica and
starve selective batching. Serve still does what it is good at: placement (one GPU or CPU slot per
replica), health checks, and restarting a replica that died.

    HTTP (Serve proxy) ─> OtasRouter: create_app(RoutedEngine) ─┬─> otas-replica-0: Engine + Scheduler
                                                                └─> otas-replica-1: ...
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from prometheus_client import CollectorRegistry
from ray import serve

from otas.config import HttpConfig
from otas.profile.table import Profile
from otas.scale.frontend import RoutedEngine, with_replicas_endpoint
from otas.scale.frontend_config import FrontendConfig, fastest_latency
from otas.scale.replica import ReplicaCore, ReplicaSpec, Reply
from otas.scale.router import RouterConfig
from otas.server import memory
from otas.server.app import ServeConfig, create_app
from otas.server.logs import setup_logging
from otas.server.metrics import Metrics

log = logging.getLogger("otas.scale")
APP_NAME = "otas"


@serve.deployment
class EngineReplica:
    """One engine: its own Scheduler and runner (one device). Never raises on a request: refusals
    come back in the `Reply`, so an exception at the router always means the replica failed."""

    async def __init__(self, spec: ReplicaSpec, index: int, log_level: str = "info"):
        setup_logging(log_level)
        self.core = ReplicaCore(spec, index)
        await self.core.start()
        memory.freeze_heap()  # loaded and warmed up: full collections never scan the model again
        ctx = ray.get_runtime_context()
        # Serve's actors are named in its own namespace, whatever the job's is
        self.actor = {"name": ctx.get_actor_name(), "namespace": "serve", "node": ctx.get_node_id()}
        log.info("replica ready", extra={"event": "replica_ready", "index": index, "actor": self.actor["name"]})

    async def submit(self, app: str, image: np.ndarray, arrival_epoch_ms: float) -> Reply:
        return await self.core.submit(app, image, arrival_epoch_ms)

    async def stats(self, delivered: Sequence[float] = ()) -> dict[str, Any]:
        return {**self.core.stats(delivered), "actor": self.actor}

    async def describe(self) -> dict[str, Any]:
        return self.core.describe()

    async def check_health(self) -> None:
        """Serve's health check: a replica whose engine loop died is replaced."""
        if not self.core.healthy:
            raise RuntimeError(f"replica {self.core.index}: the engine loop is not running")

    async def __del__(self):
        await self.core.stop()  # graceful: queued requests are served first


class RayReplica:
    """`ReplicaClient` over a Serve deployment handle."""

    def __init__(self, handle, name: str):
        self.handle, self.name = handle, name

    async def _call(self, method: str, *args):
        resp = getattr(self.handle, method).remote(*args)
        try:
            return await resp
        except asyncio.CancelledError:
            resp.cancel()  # the replica skips a request whose caller went away
            raise

    async def submit(self, app: str, image: np.ndarray, arrival_epoch_ms: float) -> Reply:
        return await self._call("submit", app, image, arrival_epoch_ms)

    async def stats(self, delivered: Sequence[float] = ()) -> dict[str, Any]:
        return await self._call("stats", list(delivered))

    async def describe(self) -> dict[str, Any]:
        return await self._call("describe")


@serve.deployment
@serve.ingress()
class OtasRouter:
    """The HTTP front: `otas.server.app.create_app` around a RoutedEngine, plus `GET /v1/replicas`."""

    async def __init__(
        self,
        replicas: list,
        spec: ReplicaSpec,
        router_config: RouterConfig,
        frontend_config: FrontendConfig,
        max_body_bytes: int,
        log_level: str = "info",
    ):
        setup_logging(log_level)
        clients = [RayReplica(h, f"otas-replica-{i}") for i, h in enumerate(replicas)]
        desc = await clients[0].describe()
        # the replicas' profile as they serve it (read at their runner's buckets, `Runner.served_profile`)
        profile = Profile.from_dict(desc["info"].get("profile", spec.profile))
        lat_fast = fastest_latency(profile, spec.scheduler.max_batch)
        registry = CollectorRegistry()
        self.engine = RoutedEngine(
            clients, spec.apps, desc, lat_fast, router_config, frontend_config, registry=registry, decode=spec.decode
        )
        info = {**desc["info"], "backend": "ray", "replicas": len(clients)}
        # Ray Serve's proxy owns the connections (no connection guards here); bodies are guarded by the app.
        # JSON is parsed on this actor's loop: a parser process spawned inside a Ray actor is untested.
        mb = max_body_bytes / (1 << 20)
        http = HttpConfig(max_body_mb=mb, max_inflight_mb=max(64.0, mb), json_workers=0)
        serve_cfg = ServeConfig(model_name=profile.model, max_body_bytes=max_body_bytes, info=info, http=http)
        metrics = Metrics(profile.gammas, registry)
        metrics.watch_delivery(lambda: self.engine.delivery.ms)
        app = create_app(self.engine, serve_cfg, metrics)
        self.asgi = with_replicas_endpoint(app, self.engine)
        memory.freeze_heap()

    def __serve_build_asgi_app__(self):
        return self.asgi


def build_app(
    spec: ReplicaSpec,
    replicas: int,
    max_body_bytes: int = 8 << 20,
    router_config: RouterConfig | None = None,
    frontend_config: FrontendConfig | None = None,
    log_level: str = "info",
    health_check_period_s: float = 1.0,
):
    """The Serve application: `replicas` engine deployments (one GPU each with device cuda, one CPU
    slot otherwise) and the router. Pass it to `serve.run`."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: use at least 1")
    if spec.device.startswith("cuda"):
        resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
    else:
        resources = {"num_cpus": 1}
    # Serve must not queue or refuse ahead of the scheduler: its backpressure (429) is the contract.
    ongoing = min(spec.scheduler.max_queue + 4 * spec.scheduler.max_batch + 64, 100_000)
    bound = [
        EngineReplica.options(
            name=f"otas-replica-{i}",
            num_replicas=1,
            ray_actor_options=resources,
            max_ongoing_requests=ongoing,
            health_check_period_s=health_check_period_s,
            health_check_timeout_s=max(10.0, 5 * health_check_period_s),
            graceful_shutdown_timeout_s=30,
        ).bind(spec, i, log_level)
        for i in range(replicas)
    ]
    router = OtasRouter.options(
        name="otas-router",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=replicas * ongoing + 256,
        graceful_shutdown_timeout_s=40,
    )
    return router.bind(
        bound,
        spec,
        router_config or RouterConfig(slo_class_tolerance=spec.scheduler.slo_class_tolerance),
        frontend_config or FrontendConfig(),
        max_body_bytes,
        log_level,
    )


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Block until GET /v2/health/ready answers 200 (every wait bounded)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s; see the Ray logs (/tmp/ray/session_latest)")
        time.sleep(0.2)
