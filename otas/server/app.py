"""The ASGI app (Starlette): KServe v2 endpoints, the friendly `/v1` API, `/metrics`, around any
`ServingEngine` (the local `Engine`, or the Ray router's `RoutedEngine`); optionally the KServe v2
gRPC API beside it, on the same event loop and engine (`grpc_api/service.py`).

Every bad input is a 4xx with a `reason` code and a message naming the value and the fix; the
engine's refusals map to 429 (queue full: back off) or 503 (cannot meet the deadline, or shutting
down); only a failed batch is a 500. Every error body is JSON, unknown paths and methods included.
Request bodies are read by a guard (`guard.py`: size, bytes in flight, timeouts) before the app
sees them, and connections are guarded too (`connections.py`: count, header timeout and size,
draining at shutdown). The endpoints live in `handlers.py` and `http_infer.py`; this module
assembles them and runs the lifecycle: engine, then gRPC, up; gRPC (finishing its calls in
flight), then the engine (draining its queue), down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from otas.config import HttpConfig
from otas.engine.serving import ServingEngine
from otas.server import admin, handlers, http_infer
from otas.server.admission import FrontDoor
from otas.server.guard import Guard, guard_bodies
from otas.server.metrics import Metrics
from otas.server.parsing import JsonParser

log = logging.getLogger("otas.server")


@dataclass
class ServeConfig:
    """Knobs of the HTTP layer."""

    model_name: str
    """The name served under /v2/models/{model} (the profile's model name)."""
    max_body_bytes: int = 8 << 20
    """Request bodies above this are refused with 413 before being read whole."""
    top_k: int = 3
    """Default number of probabilities /v1/apps/{app}/classify returns."""
    info: dict[str, Any] | None = None
    """Served at /v1/config: policy, scheduler config, profile (the load generator's simulator reads it)."""
    grpc_port: int | None = None
    """The KServe v2 gRPC API's port: None = no gRPC, 0 = any free port (the bound one is served at
    /v1/config as `grpc_port`). The same body limit applies to its messages."""
    grpc_host: str = "127.0.0.1"
    grpc_grace_s: float = 5.0
    """At shutdown, gRPC calls in flight get this long to finish before they are cancelled."""
    start_parser: bool = False
    """Start the JSON parser process with the server (`otas serve`), not with the first large body."""
    http: HttpConfig = field(default_factory=HttpConfig)
    """Connection and body limits, timeouts, draining, JSON parsing (its `max_body_mb` is not read:
    `max_body_bytes` is the limit)."""
    admin_token: str = field(default="", repr=False)
    """Bearer token of POST/PUT/DELETE /v1/apps (`admin.py`); empty = those endpoints are off (403)."""
    apps_file: Path | None = None
    """Where application changes are persisted (the package's apps.yaml); None = not persisted."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={self.max_body_bytes}: use at least 1024 (default 8 MiB)")
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: use an integer >= 1")
        if self.grpc_port is not None and not 0 <= self.grpc_port < 65536:
            raise ValueError(f"grpc_port={self.grpc_port}: use 0..65535, or None for no gRPC")


def create_app(
    engine: ServingEngine, config: ServeConfig, metrics: Metrics | None = None, routes: list[Route] | None = None
) -> Starlette:
    """The ASGI app around a (not yet started) engine; the app's lifespan starts and stops it.
    `metrics`, if given, becomes the engine's observer and is served at /metrics. `routes`: other
    endpoints than the whole API (an HTTP front-end process's, `workers.py`)."""
    if metrics is not None:
        engine.observer = metrics
    errors = {HTTPException: handlers.http_error, Exception: handlers.internal_error}
    app = Starlette(routes=_routes() if routes is None else routes, lifespan=_lifespan, exception_handlers=errors)
    # a path with a trailing slash is not found (a JSON 404), not redirected to a URL built from the
    # client's own Host header
    app.router.redirect_slashes = False
    app.state.engine, app.state.config, app.state.metrics = engine, config, metrics
    app.state.grpc_port = None
    app.state.guard = Guard(config.http, config.max_body_bytes)
    if config.http.front_budget > 0:
        share = config.http.front_budget
        app.state.guard.door = FrontDoor(lambda: share * min((a.slo_ms for a in engine.apps.values()), default=0.0))
        if metrics is not None:
            metrics.watch(app.state.guard.door)
    app.state.parser = None
    app.add_middleware(guard_bodies, guard=app.state.guard)
    return app


def _routes() -> list[Route]:
    h = handlers
    model = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    return [
        Route("/v2/health/live", h.live),
        Route("/v2/health/ready", h.ready),
        Route("/v2", h.server_meta),
        *(Route(m, h.model_meta) for m in model),
        *(Route(f"{m}/ready", h.model_ready) for m in model),
        *(Route(f"{m}/infer", http_infer.infer, methods=["POST"]) for m in model),
        *(Route(f"{m}/config", h.model_config) for m in model),
        *(Route(f"{m}/stats", h.model_stats) for m in model),
        Route("/v1/apps", h.list_apps),
        Route("/v1/apps", admin.create_app_entry, methods=["POST"]),
        Route("/v1/apps/{app}", admin.update_app_entry, methods=["PUT"]),
        Route("/v1/apps/{app}", admin.delete_app_entry, methods=["DELETE"]),
        Route("/v1/apps/{app}/classify", http_infer.classify, methods=["POST"]),
        Route("/v1/config", h.server_config),
        Route("/metrics", h.metrics),
    ]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    engine: ServingEngine = app.state.engine
    config: ServeConfig = app.state.config
    await engine.start()
    log.info("engine started", extra={"event": "start", "model": config.model_name, "apps": sorted(engine.apps)})
    app.state.parser = JsonParser(config.http.json_workers)
    if config.start_parser:
        app.state.parser.start()
    grpc_server = None
    try:
        if config.grpc_port is not None:
            from otas.server.grpc_api.service import start_grpc

            guard = app.state.guard
            grpc_server, app.state.grpc_port = await start_grpc(
                engine, config, guard.door, lambda: guard.draining, guard
            )
            log.info("grpc started", extra={"event": "grpc_start", "port": app.state.grpc_port})
        yield
    finally:
        # The engine first: it refuses new requests (gRPC calls too: UNAVAILABLE shutting_down), serves
        # what is queued and answers the rest shutting_down, so no gRPC call is left for grpc.aio to
        # cancel (CANCELLED) when its grace ends; the grace is then for the answers' writes.
        await engine.stop()
        if grpc_server is not None:
            await grpc_server.stop(config.grpc_grace_s)
            log.info("grpc stopped", extra={"event": "grpc_stop"})
        await asyncio.to_thread(app.state.parser.shutdown)
        log.info("engine stopped", extra={"event": "stop", "batches": engine.batches})


class ServerThread:
    """Uvicorn on loopback in a background thread (tests, benchmarks): `with ServerThread(app) as s: s.url`
    (and `s.grpc_target`, host:port, when the app serves gRPC)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        from otas.server.connections import make_server

        kwargs.setdefault("log_level", "warning")
        self.server = make_server(app, host, port, **kwargs)
        self.thread = threading.Thread(target=self.server.run, name="otas-uvicorn", daemon=True)
        self.app, self.url, self.grpc_target = app, "", ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        if (grpc_port := getattr(getattr(self.app, "state", None), "grpc_port", None)) is not None:
            self.grpc_target = f"{host}:{grpc_port}"
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __exit__(self, *exc: object) -> None:
        self.stop()
