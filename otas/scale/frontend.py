"""The router's engine: an `Engine`-shaped object that `otas.server.app.create_app` serves as is
(same endpoints, same bodies, same metrics), but whose `submit` routes each decoded image to a
replica instead of a local scheduler. No ray import: replicas are reached through `ReplicaClient`
(Ray Serve handles in `deployment.py`, plain objects in tests).

    HTTP ─> create_app (parse, decode) ─> RoutedEngine.submit ─> Router.route ─> replica k
                                                 ^ retry elsewhere while the deadline allows
                                                 └── replica k failed: Router.down(k), probe until it answers

Every accepted image gets exactly one answer: the replica's result or refusal,
`NotServed("error", "replica_failed")` when its replica died (or stayed silent past the deadline
plus `grace_s`) and no retry could still make the deadline, or `NotServed("error", "shutting_down")`
when it is still in flight once `stop()` has drained for `drain_s`. Nothing waits unboundedly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse

from otas.config import EngineConfig
from otas.data.preprocess import Preprocess
from otas.engine.delivery import REPORT_MAX, Delivery
from otas.engine.images import DecodeBusy, Decoder, DecodeRestarted
from otas.engine.serving import NotServed, Observer, Served, gather_all, observe
from otas.scale.frontend_config import FrontendConfig, ReplicaClient, RouterMetrics
from otas.scale.router import NoReplica, Router, RouterConfig
from otas.types import App

log = logging.getLogger("otas.scale")


class RoutedEngine:
    """A `ServingEngine` over replicas (see the module docstring)."""

    def __init__(
        self,
        clients: Sequence[ReplicaClient],
        apps: Sequence[App],
        describe: dict[str, Any],
        lat_fast: list[float],
        router_config: RouterConfig | None = None,
        config: FrontendConfig | None = None,
        registry: CollectorRegistry | None = None,
        decode: EngineConfig | None = None,
        clock=time.monotonic,
    ):
        """`describe`: a replica's `ReplicaCore.describe()`; `lat_fast`: `fastest_latency(profile, B_max)`
        (a retry also needs at least `lat_fast[1]` left before its deadline); `decode`: the decoding
        options (workers, processes, queue, image limits and formats; None: the defaults)."""
        self.clients = list(clients)
        self.names = [c.name for c in self.clients]
        self.apps = {a.name: a for a in apps}
        self.config = config or FrontendConfig()
        self.router = Router(apps, len(self.clients), lat_fast, router_config)
        self.image_size: int = describe["image_size"]
        self.classes: dict[str, list[str]] = describe["classes"]
        self.observer = Observer()
        self.rmetrics = RouterMetrics(registry or CollectorRegistry(), self.names)
        self.batches = 0
        self._queued = [0] * len(self.clients)
        self._pids: list[int | None] = [None] * len(self.clients)
        self._actors: list[Any] = [None] * len(self.clients)
        self._misses = [0] * len(self.clients)
        self._clock, self._t0 = clock, clock()
        pre = describe.get("preprocess")
        d = decode or EngineConfig()
        self._decode = Decoder(
            Preprocess.from_dict(pre) if pre else describe["image_size"], d.decode_workers, d.decode_limits(),
            d.decode_queue, clock=clock, processes=d.decode_processes,
        )  # fmt: skip
        self._inflight: set[asyncio.Task] = set()
        self.delivery = Delivery()
        """The delivery times of this router's responses (`delivered`)."""
        self._delivered: deque[float] = deque(maxlen=REPORT_MAX)  # since the last probe, the latest
        self._probe: asyncio.Task | None = None
        self._closing = False
        self.fast_ms = lat_fast[1]

    # -- the ServingEngine surface ------------------------------------------------------------------
    def now_ms(self) -> float:
        return (self._clock() - self._t0) * 1000.0

    @property
    def ready(self) -> bool:
        return self._probe is not None and not self._closing and self.router.healthy_count() > 0

    async def start(self) -> None:
        self._probe = asyncio.create_task(self._probe_loop(), name="otas-router-probe")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop admitting, let in-flight requests finish (for `timeout_s`, default `drain_s`), then
        answer what is left with `NotServed("error", "shutting_down")` (a 503: retry elsewhere)."""
        self._closing = True
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.config.drain_s if timeout_s is None else timeout_s)
        left = list(self._inflight)
        for t in left:
            t.cancel()  # its replica call too; `_settle` answers its caller
        await asyncio.gather(*left, return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        self._decode.shutdown()

    async def decode(
        self,
        app: str,
        payloads: Sequence[bytes],
        arrival_ms: float | None = None,
        on_large: Callable[[], None] | None = None,
    ) -> list[np.ndarray]:
        if self._closing:
            raise self._refuse(app, len(payloads), "shutting_down", "the server is shutting down; retry elsewhere")
        try:
            return await self._decode.many(payloads, on_large=on_large)
        except DecodeBusy as e:
            raise self._refuse(app, len(payloads), "decode_busy", str(e)) from None
        except DecodeRestarted as e:  # --decode-processes: a decode process died under it
            raise self._refuse(app, len(payloads), "decode_restarted", str(e)) from None

    def _refuse(self, app: str, n: int, reason: str, detail: str) -> NotServed:
        for _ in range(n):
            observe(self.observer.ended, app, "rejected", reason)
        return NotServed("rejected", reason, detail)

    def delivered(self, ms: float) -> None:
        """Kept (`delivery`, `otas_delivery_seconds`) and sent to every replica with the next probe:
        its engine plans deadlines short by them (an answer's time from the replica to leaving here)."""
        self.delivery.add(ms)
        self._delivered.append(ms)

    def submit_many(
        self, app: str, images: Sequence[np.ndarray], arrival_ms: float | None = None
    ) -> asyncio.Future[list[Served]]:
        """Route each image (as `submit`); one future for all, failing with the first failure (the
        rest cancelled). Unlike the local engine, each image's outcome is counted as its replica
        answers, so a failed request's served images count as served."""
        futures: list[asyncio.Future[Served]] = []
        try:
            for image in images:
                futures.append(self.submit(app, image, arrival_ms))
        except Exception:
            for f in futures:
                f.cancel()
            raise
        return gather_all(futures)

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        """Route one image; the future resolves to Served or raises NotServed (as Engine.submit)."""
        if app not in self.apps:
            raise ValueError(f"unknown application {app!r}; known: {sorted(self.apps)}")
        if self._closing:
            observe(self.observer.ended, app, "rejected", "shutting_down")
            raise NotServed("rejected", "shutting_down", "the server is shutting down; retry on another instance")
        now = self.now_ms()
        arrival = now if arrival_ms is None else min(arrival_ms, now)
        loop = asyncio.get_running_loop()
        # The caller holds a future of its own, not the task: a task cancelled by stop() still
        # answers its caller (see _settle), and a caller that goes away cancels the task.
        fut: asyncio.Future[Served] = loop.create_future()
        task = loop.create_task(self._serve(app, image, arrival))
        self._inflight.add(task)
        task.add_done_callback(lambda t: self._settle(t, app, fut))
        fut.add_done_callback(lambda f: f.cancelled() and task.cancel())
        return fut

    def _settle(self, task: asyncio.Task, app: str, fut: asyncio.Future[Served]) -> None:
        """The caller's one answer from the task's end: its result or NotServed, or, for a task
        cancelled by stop() (even before it ran), `shutting_down`. Never a bare CancelledError."""
        self._inflight.discard(task)
        e = None if task.cancelled() else task.exception()  # read even when nobody waits any more
        if fut.done():  # the caller went away
            return
        if task.cancelled():
            observe(self.observer.ended, app, "error", "shutting_down")
            e = NotServed(
                "error", "shutting_down", "the server shut down before a replica answered this request; retry"
            )
        elif e is not None and not isinstance(e, NotServed):
            log.error("request failed", exc_info=e, extra={"event": "internal_error", "app": app})
            observe(self.observer.ended, app, "error", "internal")
            e = NotServed("error", "internal", f"the router failed on this request ({type(e).__name__}); retry")
        if e is None:
            fut.set_result(task.result())
        else:
            fut.set_exception(e)

    # -- one request ------------------------------------------------------------------------------
    async def _serve(self, app: str, image: np.ndarray, arrival: float) -> Served:
        slo, tried = self.apps[app].slo_ms, []
        last_error: BaseException = RuntimeError("not sent")
        while True:
            age = self.now_ms() - arrival
            try:
                route = self.router.route(app, self.now_ms(), age, exclude=tried)
            except NoReplica as e:
                if tried:
                    raise self._fail(app, tried[-1], last_error, retried=len(tried) - 1) from None
                observe(self.observer.ended, app, "rejected", "no_replica")
                raise NotServed(
                    "rejected", "no_replica", f"{e}; Ray is restarting replicas, retry in a few seconds"
                ) from None
            k = route.replica
            self.router.sent(k, app, route.kind)
            self.rmetrics.routed.labels(self.names[k], route.kind).inc()
            epoch_ms = time.time() * 1000.0 - age
            t0 = time.perf_counter()
            try:
                reply = await asyncio.wait_for(
                    self.clients[k].submit(app, image, epoch_ms), (slo - age) / 1000.0 + self.config.grace_s
                )
            except asyncio.CancelledError:
                self.router.done(k)
                raise
            except Exception as e:  # the replica died, hung, or Ray could not reach it
                last_error = e
                self._down(k, e)
                tried.append(k)
                left = slo - (self.now_ms() - arrival)
                if len(tried) <= self.config.max_retries and left > self.fast_ms:
                    continue
                raise self._fail(app, k, e, retried=len(tried) - 1) from None
            rpc_ms = (time.perf_counter() - t0) * 1e3
            self.rmetrics.rpc.observe(max(rpc_ms - reply.replica_ms, 0.0) / 1e3)
            s = reply.served
            self.router.done(k, *((s.exec_ms, s.batch_size) if s is not None else ()))
            self._absorb(k, reply.queued, reply.batches, reply.decisions)
            if s is not None:
                observe(self.observer.ended, app, "served", "", s)
                return s
            observe(self.observer.ended, app, reply.outcome, reply.reason)
            raise NotServed(reply.outcome, reply.reason, reply.detail)

    def _fail(self, app: str, k: int, e: BaseException, retried: int) -> NotServed:
        observe(self.observer.ended, app, "error", "replica_failed")
        again = f" (after {retried} retry)" if retried else ""
        return NotServed(
            "error",
            "replica_failed",
            f"replica {self.names[k]} failed while serving this request{again}: {type(e).__name__}: "
            f"{str(e)[:200]}; the router stopped sending to it and Ray Serve restarts it; retry",
        )

    def _down(self, k: int, e: BaseException, call: bool = True) -> None:
        if call:  # a request's call ended (a probe is none)
            self.router.done(k)
        self.rmetrics.failures.labels(self.names[k]).inc()
        if self.router.down(k):
            self.rmetrics.up.labels(self.names[k]).set(0)
            log.warning(
                "replica out of rotation",
                extra={"event": "replica_down", "replica": self.names[k], "error": f"{type(e).__name__}: {e}"[:300]},
            )

    def _absorb(self, k: int, queued: int, batches: list, decisions: list) -> None:
        for ev in batches:
            observe(self.observer.batch, *ev)
            self.batches += 1
        for ms, planned in decisions:
            observe(self.observer.decided, ms, planned)
        self._queued[k] = queued
        observe(
            self.observer.queue_depth, sum(q for q, r in zip(self._queued, self.router.replicas, strict=True) if r.up)
        )

    # -- health -------------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            delivered = list(self._delivered)  # to every replica
            self._delivered.clear()
            await asyncio.gather(*(self._probe_one(k, delivered) for k in range(len(self.clients))))
            await asyncio.sleep(self.config.probe_s)

    async def _probe_one(self, k: int, delivered: list[float]) -> None:
        try:
            st = await asyncio.wait_for(self.clients[k].stats(delivered), self.config.probe_timeout_s)
        except TimeoutError:  # slow is not dead, but two silent probes in a row take it out
            self._misses[k] += 1
            if self._misses[k] >= 2 and self.router.replicas[k].up:
                self._down(k, TimeoutError(f"{self._misses[k]} health probes unanswered"), call=False)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.router.replicas[k].up:
                self._down(k, e, call=False)
            return
        self._misses[k] = 0
        self._absorb(k, st["queued"], st["batches"], st.get("decisions", []))
        if self._pids[k] is not None and st["pid"] != self._pids[k]:
            log.warning("replica restarted", extra={"event": "replica_restarted", "replica": self.names[k],
                                                    "pid": st["pid"]})  # fmt: skip
        self._pids[k], self._actors[k] = st["pid"], st.get("actor")
        if st["healthy"] and self.router.up(k):
            self.rmetrics.up.labels(self.names[k]).set(1)
            log.info("replica back in rotation", extra={"event": "replica_up", "replica": self.names[k]})

    def snapshot(self) -> dict[str, Any]:
        snap = self.router.snapshot()
        for r in snap["replicas"]:
            k = r["index"]
            r.update(name=self.names[k], pid=self._pids[k], actor=self._actors[k], queued=self._queued[k])
        return snap


def with_replicas_endpoint(app, engine: RoutedEngine):
    """ASGI: `GET /v1/replicas` (the router's view: health, load, routing counts, shares), the rest
    to the server app unchanged (its lifespan included)."""

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/replicas":
            return await JSONResponse(engine.snapshot())(scope, receive, send)
        return await app(scope, receive, send)

    return asgi
