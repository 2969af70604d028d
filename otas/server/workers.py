"""`otas serve --http-workers K`: HTTP in K front-end processes, one engine process.

One event loop cannot both parse HTTP at the rate a GPU serves and run the engine: on an H100 the
host, not the device, was the ceiling. With K > 0 the serving process binds the port and starts K
front-end processes that accept on it. Each runs the same HTTP stack as one process would
(`connections.py`, `guard.py`, `admission.py`, the inference handlers), around a `RemoteEngine`
(`remote.py`) that sends parsed, decoded requests to this process's one engine over a Unix socket
(`intake.py`). Every other endpoint (metrics, config, applications, model metadata) is passed
through whole to this process's own app, so there is one scheduler, one set of metrics, one
admin API. gRPC stays in this process.

    clients ─> port ─┬─ front end 1 ─┐  frames (pixels, answers)
                     ├─ front end 2 ─┼──────────────> intake ─> Engine (scheduler, device)
                     └─ front end K ─┘    Unix socket

The front ends' limits (connections, bytes in flight, the front door) hold per process. A front
end that dies is replaced; its requests in flight are cancelled (their clients lose the
connection). At SIGINT or SIGTERM the front ends drain and finish what they hold first, then the
engine drains its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otas.config import EngineConfig
from otas.server import handlers, http_infer
from otas.server.app import ServeConfig, create_app
from otas.server.guard import body_of, until_disconnect
from otas.server.handlers import engine_of, guarded
from otas.server.intake import Intake
from otas.server.ring import Segment, SegmentHandle

log = logging.getLogger("otas.server")
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
MAX_WORKERS = 64


@dataclass
class WorkerSpec:
    """What a front-end process is started with (pickled to it)."""

    intake: str
    """The engine process's Unix socket."""
    serve: ServeConfig
    """The HTTP layer's config (no gRPC, no JSON parser process: the front end is one)."""
    decode: EngineConfig
    """Decoding options (threads: the front end is its own process)."""
    log_level: str = "info"
    drain_s: float = 30.0
    """At shutdown, answers in flight are awaited this long."""
    ring_bytes: int = 64 << 20
    """Each front end's shared segment for pixels (`ring.py`); 0 = pixels travel in the frames."""


# -- a front-end process ----------------------------------------------------------------------------
def worker_routes() -> list[Route]:
    """Health and inference here; everything else passed through to the engine process's app."""
    model = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    return [
        Route("/v2/health/live", handlers.live),
        Route("/v2/health/ready", handlers.ready),
        *(Route(f"{m}/ready", handlers.model_ready) for m in model),  # this front end's drain counts
        *(Route(f"{m}/infer", http_infer.infer, methods=["POST"]) for m in model),
        Route("/v1/apps/{app}/classify", http_infer.classify, methods=["POST"]),
        Route("/{path:path}", proxy, methods=METHODS),
    ]


@guarded
async def proxy(request: Request) -> Response:
    """Any other request, answered by the engine process's app as if it had come there."""
    scope = request.scope
    meta = {
        "method": request.method,
        "path": scope["path"],
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": list(scope["client"]) if scope.get("client") else None,
    }
    body = bytes(await body_of(request))
    status, headers, content = await until_disconnect(request.receive, engine_of(request).call(meta, body))
    response = Response(content, status_code=status)
    response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return response


def worker_main(spec: WorkerSpec, address: tuple, segment: SegmentHandle | None = None, token: str = "") -> None:
    """A front-end process: uvicorn on its own listening socket of the served port until SIGTERM (or
    the engine process goes away)."""
    os.setpgid(0, 0)  # Ctrl-C reaches the engine process only; it stops the front ends in order
    from otas.server import memory
    from otas.server.connections import make_server
    from otas.server.logs import setup_logging
    from otas.server.remote import RemoteEngine

    setup_logging(spec.log_level)
    memory.tune()
    engine = RemoteEngine(spec.intake, spec.decode, spec.drain_s, segment, token)
    app = create_app(engine, spec.serve, None, worker_routes())
    engine.door = app.state.guard.door
    sock = bind(*address[:2])  # listened on once the engine is connected (asyncio listens as it starts serving)
    host, port = address[:2]
    server = make_server(app, host, port, timeout_graceful_shutdown=spec.drain_s)
    engine.on_lost = lambda: setattr(server, "should_exit", True)
    server.run(sockets=[sock])


# -- the engine process's side ----------------------------------------------------------------------
def bind(host: str, port: int, probe: bool = False) -> socket.socket:
    """A socket of the served port that shares it (SO_REUSEPORT), bound, not listening. The engine
    process binds one first and never listens on it: it holds the port (`--port 0` picks one for
    all). Each front end binds its own, listened on once it is connected to the engine, so the
    kernel spreads new connections evenly over the front ends; on one shared listening socket,
    whichever front end woke first took a whole burst of them. `probe`: first make sure no other
    process holds the port (SO_REUSEPORT would let a second server share it silently)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if probe:
        with socket.socket(family, socket.SOCK_STREAM) as alone:
            alone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                alone.bind((host, port))
            except OSError as e:
                raise ValueError(f"--port {port} on {host}: cannot listen there ({e.strerror or e})") from None
            port = alone.getsockname()[1]  # --port 0: the one the system picked
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"--port {port} on {host}: cannot listen there ({e.strerror or e})") from None
    return sock


class Workers:
    """K front-end processes on one port, replaced if one dies."""

    def __init__(self, k: int, spec: WorkerSpec, address: tuple, segments: dict | None = None):
        """`segments`: where each front end's shared segment is registered by its token, for the
        intake to find when the front end attaches (None: no shared segments)."""
        if not 1 <= k <= MAX_WORKERS:
            raise ValueError(f"http workers={k}: use 1..{MAX_WORKERS} (0 = HTTP in the engine's process)")
        self.k, self.spec, self.address, self.segments = k, spec, address, segments
        self.tokens: list[str | None] = [None] * k
        self.ctx = multiprocessing.get_context("spawn")  # the engine process holds threads: no fork
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.started: list[multiprocessing.process.BaseProcess] = []
        """Every process started (one spawned while stopping began included): `stop` ends them all."""
        self.stopping = False
        self.restarts = 0
        self.born = [0.0] * k

    def _spawn(self, i: int):
        handle, token, seg = None, "", None
        if self.segments is not None and self.spec.ring_bytes > 0:
            if self.tokens[i] is not None:  # its predecessor's, never attached
                self.segments.pop(self.tokens[i], None)
            token = f"{i}.{self.restarts}.{os.getpid()}"
            seg = Segment.new(self.spec.ring_bytes)
            self.segments[token], self.tokens[i] = seg, token
            handle = seg.handle()
        args = (self.spec, self.address, handle, token)
        p = self.ctx.Process(target=worker_main, args=args, name=f"otas-http-{i}", daemon=True)
        p.start()
        self.started.append(p)
        self.born[i] = time.monotonic()
        if seg is not None:
            seg.close()  # the front end has its own fd now; the mapping stays here
        return p

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.k)]

    async def supervise(self, period_s: float = 0.5, settle_s: float = 60.0) -> None:
        """Replace a front end that died (not one that was stopped); one that keeps dying soon after
        it started is replaced after a wait that doubles each time (up to 30 s)."""
        wait = [0.0] * self.k
        due = [0.0] * self.k
        while not self.stopping:
            await asyncio.sleep(period_s)
            for i, p in enumerate(self.procs):
                if self.stopping or p.is_alive():
                    continue
                now = time.monotonic()
                if due[i] == 0.0:  # just found dead
                    quick = now - self.born[i] < settle_s
                    wait[i] = min(max(2 * wait[i], 0.5), 30.0) if quick else 0.0
                    due[i] = now + wait[i]
                    log.warning("http worker died; starting another",
                                extra={"event": "worker_died", "worker": i, "exitcode": p.exitcode,
                                       "after_s": wait[i]})  # fmt: skip
                if now >= due[i]:
                    due[i] = 0.0
                    self.restarts += 1
                    self.procs[i] = await asyncio.to_thread(self._spawn, i)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM each front end (it drains and answers what it holds), then wait; kill what is left."""
        self.stopping = True
        for p in self.started:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + timeout_s
        for p in self.started:
            p.join(max(end - time.monotonic(), 0.1))
            if p.is_alive():
                log.warning("http worker did not stop; killing it", extra={"event": "worker_killed", "pid": p.pid})
                p.kill()
                p.join(5)


async def wait_connected(
    intake: Intake, workers: Workers, k: int, stop: asyncio.Event, timeout_s: float = 180.0
) -> None:
    end = time.monotonic() + timeout_s
    while len(intake.conns) < k and not stop.is_set():
        dead = [p for p in workers.procs if p.exitcode is not None]
        if dead:
            raise RuntimeError(f"an HTTP worker exited while starting (exit code {dead[0].exitcode}); see the log")
        if time.monotonic() > end:
            raise RuntimeError(f"{len(intake.conns)} of {k} HTTP workers connected within {timeout_s:g} s")
        await asyncio.sleep(0.02)


async def run_engine_process(
    app,
    k: int,
    sock: socket.socket,
    spec: WorkerSpec,
    preprocess: dict | None,
    stop_timeout_s: float,
    on_started: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """The engine (through `app`'s lifespan: engine, gRPC), the intake, and K front ends on `sock`'s port,
    until SIGINT/SIGTERM (or `stop` is set); then the front ends drain, then the engine."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    folder = tempfile.mkdtemp(prefix="otas-intake-")
    path = str(Path(folder) / "engine.sock")
    spec.intake = path
    engine = app.state.engine
    try:
        async with app.router.lifespan_context(app):
            intake = Intake(engine, app, spec.serve.max_body_bytes, preprocess)
            if app.state.metrics is not None:
                app.state.metrics.watch(intake.fronts)
            await intake.start(path)
            workers = Workers(k, spec, sock.getsockname()[:2], intake.segments)
            await asyncio.to_thread(workers.start)
            supervisor = None
            try:
                await wait_connected(intake, workers, k, stop)
                if on_started is not None:
                    on_started(sock.getsockname()[1])
                supervisor = asyncio.create_task(workers.supervise())
                await stop.wait()
            finally:
                log.info("stopping http workers", extra={"event": "workers_stop", "workers": k})
                workers.stopping = True
                if supervisor is not None:
                    supervisor.cancel()
                await asyncio.to_thread(workers.stop, stop_timeout_s)
                await intake.close()
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
