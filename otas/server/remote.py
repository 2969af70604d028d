"""A front-end process's engine (`otas serve --http-workers`): a `ServingEngine` whose requests go to
the engine process over its Unix socket (`intake.py`, frames: `wire.py`), so the HTTP app of
`create_app` serves in several processes while one engine schedules every request.

Images are decoded here, in the front end (its own threads); raw pixels are sent as they are. Each
request gets exactly one answer: the engine's SERVED or REFUSED, or, if the engine process goes
away, `NotServed("error", "engine_gone")`; stopping waits for what is in flight (bounded) and then
answers the rest `shutting_down`. Cancelling a request's future sends CANCEL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from otas.collate import collate
from otas.config import EngineConfig
from otas.data.preprocess import Preprocess
from otas.engine.delivery import REPORT_MAX
from otas.engine.images import DecodeBusy, Decoder, DecodeRestarted
from otas.engine.serving import NotServed, Observer, Served
from otas.server.ring import Ring, Segment, SegmentHandle
from otas.server.wire import (
    MAX_META,
    Frame,
    FrameProtocol,
    Kind,
    WireError,
    pack,
    pack_submit,
    pack_submit_at,
    unpack_served,
)
from otas.types import App

log = logging.getLogger("otas.server")
STATS_S = 0.5
MAX_ANSWER = 64 << 20
"""Largest frame the engine sends a front end (a proxied answer, or a request's answers)."""


class RemoteEngine:
    """A `ServingEngine` in a front-end process (see the module docstring)."""

    def __init__(
        self,
        path: str,
        decode: EngineConfig | None = None,
        drain_s: float = 30.0,
        segment: SegmentHandle | None = None,
        token: str = "",
    ):
        """`segment`, `token`: the shared segment the engine process made for this front end
        (`ring.py`); without one, every request's pixels travel in its frame."""
        self.path, self.drain_s = path, drain_s
        self._segment_handle, self._token = segment, token
        self._decode_cfg = decode or EngineConfig()
        self.observer = Observer()
        self.batches = 0
        self.apps: dict[str, App] = {}
        self.image_size = 0
        self.classes: dict[str, list[str]] = {}
        self._proto: _Client | None = None
        self._decode: Decoder | None = None
        self._closing = False
        self._offset_ms = 0.0
        self.on_lost: Callable[[], None] | None = None
        """Called once if the engine process goes away (the front end then stops)."""
        self.door = None
        """This front end's `FrontDoor`, if any: its counts go to the engine every `STATS_S`."""
        self._stats: asyncio.Task | None = None
        self._delivered: deque[float] = deque(maxlen=REPORT_MAX)  # since the last report, the latest

    # -- the ServingEngine surface ---------------------------------------------------------------
    def now_ms(self) -> float:
        return time.monotonic() * 1000.0 + self._offset_ms

    @property
    def ready(self) -> bool:
        return self._proto is not None and self._proto.alive and not self._closing

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hello: asyncio.Future = loop.create_future()
        _, self._proto = await loop.create_unix_connection(lambda: _Client(self, hello), self.path)
        h = await asyncio.wait_for(hello, 30)
        self._proto.max_frame = int(h.get("max_frame", MAX_ANSWER))
        self.image_size, self.classes = int(h["image_size"]), h["classes"]
        self.set_apps(h["apps"])
        self._offset_ms = float(h["clock_ms"]) - float(h["monotonic_s"]) * 1000.0
        self._stats = asyncio.ensure_future(self._report())
        if self._segment_handle is not None:
            seg = self._segment_handle.open()
            seg.close()  # the mapping stays
            self._proto.attach(self._token, seg)
        d, pre = self._decode_cfg, h.get("preprocess")
        self._decode = Decoder(
            Preprocess.from_dict(pre) if pre else self.image_size, d.decode_workers, d.decode_limits(), d.decode_queue
        )

    async def _report(self) -> None:
        """The front door's counts to the engine process, for its /metrics."""
        while True:
            await asyncio.sleep(STATS_S)
            self.report()

    def report(self) -> None:
        """The front door's counts, and the delivery times since the last report."""
        d, p = self.door, self._proto
        if p is None or not p.alive:
            return
        stats: dict[str, Any] = {}
        if d is not None:
            stats = {"admitted": d.admitted, "refused": d.refused, "in_flight": d.in_flight, "limit": d.limit or 0,
                     "rate": d.rate or 0.0}  # fmt: skip
        if self._delivered:
            stats["delivered"] = [round(ms, 3) for ms in self._delivered]
            self._delivered.clear()
        if stats:
            p.transport.write(pack(Kind.STATS, 0, stats))

    def delivered(self, ms: float) -> None:
        """Kept for the next report: the engine process plans with it (`Engine.delivered`)."""
        self._delivered.append(ms)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop admitting; wait for the answers in flight (for `drain_s`), then answer the rest."""
        self._closing = True
        if self._stats is not None:
            self._stats.cancel()
        p = self._proto
        if p is not None and p.waiting:
            await asyncio.wait(set(p.waiting.values()), timeout=self.drain_s if timeout_s is None else timeout_s)
            p.fail_all(NotServed("error", "shutting_down", "the server shut down before this request ran; retry"))
        if p is not None:
            self.report()  # the last counts
            p.transport.close()
        if self._decode is not None:
            self._decode.shutdown()

    def set_apps(self, apps: list[dict[str, Any]]) -> None:
        self.apps = {a["name"]: App(**a) for a in apps}

    async def decode(
        self,
        app: str,
        payloads: Sequence[bytes],
        arrival_ms: float | None = None,
        on_large: Callable[[], None] | None = None,
    ) -> list[np.ndarray]:
        self._check(app)
        assert self._decode is not None
        try:
            return await self._decode.many(payloads, on_large=on_large)
        except DecodeBusy as e:
            raise NotServed("rejected", "decode_busy", str(e)) from None
        except DecodeRestarted as e:
            raise NotServed("rejected", "decode_restarted", str(e)) from None

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        many = self.submit_many(app, [image], arrival_ms)
        one: asyncio.Future[Served] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future) -> None:
            if one.done():
                return
            if f.cancelled():
                one.cancel()
            elif (e := f.exception()) is not None:
                one.set_exception(e)
            else:
                one.set_result(f.result()[0])

        many.add_done_callback(done)
        one.add_done_callback(lambda o: o.cancelled() and many.cancel())
        return one

    def submit_many(
        self, app: str, images: Sequence[np.ndarray], arrival_ms: float | None = None
    ) -> asyncio.Future[list[Served]]:
        """Send one request; refusals the front end can see (unknown app, shutting down) raise at once."""
        self._check(app)
        now = self.now_ms()
        arrival = now if arrival_ms is None else min(arrival_ms, now)
        assert self._proto is not None
        return self._proto.send(app, arrival, images)

    async def call(self, meta: dict[str, Any], body: bytes) -> tuple[int, list[list[str]], bytes]:
        """(status, headers, body) of the engine process's app for a passed-through HTTP request."""
        if self._proto is None:
            raise NotServed("error", "engine_gone", "the engine process is not connected; retry")
        return await self._proto.call(meta, body)

    def _check(self, app: str) -> None:
        if app not in self.apps:
            raise NotServed("rejected", "unknown_app", f"application {app!r} is unknown; known: {sorted(self.apps)}")
        if not self.ready:
            raise NotServed("rejected", "shutting_down", "the server is shutting down; retry on another replica")

    def served(self, frame: Frame) -> list[Served]:
        a = unpack_served(frame)
        app = self.apps.get(a.app)
        classes = self.classes[app.task] if app is not None else [str(i) for i in range(a.probs.shape[1])]
        f, i = a.floats.tolist(), a.ints.tolist()
        return [
            Served(ids, a.app, gamma, p, classes, q, e, t, bool(met), b, u)
            for (q, e, t, u), (ids, gamma, b, met), p in zip(f, i, a.probs, strict=True)
        ]


class _Client(FrameProtocol):
    """The front end's connection: requests by id, each answered once."""

    peer = "the engine"

    def __init__(self, engine: RemoteEngine, hello: asyncio.Future):
        super().__init__(MAX_ANSWER)
        self.engine, self.hello = engine, hello
        self.waiting: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.alive = False
        self.segment: Segment | None = None
        self.ring: Ring | None = None
        self.max_frame = MAX_ANSWER
        """The largest frame the engine reads (its HELLO says)."""

    def connection_made(self, transport) -> None:
        self.transport, self.alive = transport, True

    def connection_lost(self, exc) -> None:
        self.alive = False
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("the engine process closed the connection"))
        self.fail_all(NotServed("error", "engine_gone", "the engine process went away before answering; retry"))
        if self.engine.on_lost is not None and not self.engine._closing:
            self.engine.on_lost()

    def fail_all(self, e: NotServed) -> None:
        for f in self.waiting.values():
            if not f.done():
                f.set_exception(e)
        self.waiting.clear()

    def on_frame(self, f: Frame) -> None:
        if f.kind == Kind.HELLO:
            if not self.hello.done():
                self.hello.set_result(f.meta)
            return
        if f.kind == Kind.APPS:
            self.engine.set_apps(f.meta.get("apps", []))
            return
        if self.ring is not None and f.kind in (Kind.SERVED, Kind.REFUSED):
            self.ring.free(f.id)  # the engine's last word on it: its pixels' place is free again
        fut = self.waiting.pop(f.id, None)
        if fut is None or fut.done():
            return  # cancelled here meanwhile
        try:
            if f.kind == Kind.SERVED:
                fut.set_result(self.engine.served(f))
            elif f.kind == Kind.REFUSED:
                m = f.meta
                fut.set_exception(NotServed(str(m.get("outcome")), str(m.get("reason")), str(m.get("detail"))))
            elif f.kind == Kind.REPLY:
                fut.set_result((int(f.meta.get("status", 500)), f.meta.get("headers", []), bytes(f.payload)))
            else:
                raise WireError(f"unexpected frame kind {f.kind.name} from the engine")
        except (WireError, KeyError, TypeError, ValueError) as e:
            fut.set_exception(NotServed("error", "internal", f"unreadable answer from the engine ({e})"))

    def _track(self, rid: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut

        def gone(f: asyncio.Future) -> None:
            if f.cancelled() and self.waiting.pop(rid, None) is not None and self.alive:
                self.transport.write(pack(Kind.CANCEL, rid))

        fut.add_done_callback(gone)
        return fut

    def attach(self, token: str, segment: Segment) -> None:
        """Write pixels to `segment` from now on (the engine process made it, under `token`)."""
        self.segment, self.ring = segment, Ring(segment.size)
        self.transport.write(pack(Kind.ATTACH, 0, {"segment": token}))

    def send(self, app: str, arrival_ms: float, images: Sequence[np.ndarray]) -> asyncio.Future:
        """One request: its pixels into the shared segment where a place is free, else in its frame."""
        if not self.alive:
            raise NotServed("error", "engine_gone", "the engine process is gone; retry")
        rid = next(self.ids)
        shape = (len(images), *images[0].shape)  # (N, H, W, 3)
        nbytes = int(np.prod(shape))
        at = self.ring.alloc(rid, nbytes) if self.ring is not None else None
        if at is not None:
            assert self.segment is not None
            try:
                collate(images, np.frombuffer(self.segment.map, np.uint8, nbytes, at).reshape(shape))
                head = pack_submit_at(rid, app, arrival_ms, shape, at)
            except Exception:
                self.ring.free(rid)
                raise
            fut = self._track(rid)
            self.transport.write(head)
            return fut
        if nbytes + MAX_META > self.max_frame:  # the engine would refuse the frame (and close the connection)
            if self.ring is not None and nbytes <= self.ring.size:
                raise NotServed(
                    "rejected", "pixels_busy",
                    f"the shared memory for requests in flight is full ({self.ring.used} bytes held); retry shortly",
                )  # fmt: skip
            raise NotServed(
                "rejected", "too_large",
                f"{shape[0]} images of {shape[1]}x{shape[2]} decode to {nbytes} bytes, more than this server takes "
                f"in one request ({self.max_frame - MAX_META}); send fewer images per request",
            )  # fmt: skip
        pixels = collate(images, np.empty(shape, np.uint8))
        head, payload = pack_submit(rid, app, arrival_ms, pixels)
        fut = self._track(rid)
        self.transport.writelines([head, payload])
        return fut

    def call(self, meta: dict[str, Any], body: bytes) -> asyncio.Future:
        """A proxied HTTP request: the future's result is (status, headers, body)."""
        if not self.alive:
            raise NotServed("error", "engine_gone", "the engine process is gone; retry")
        rid = next(self.ids)
        try:
            head = pack(Kind.CALL, rid, meta, len(body))
        except WireError:
            raise NotServed(
                "rejected", "headers_too_large", "the request's headers are too large; send fewer"
            ) from None
        fut = self._track(rid)
        self.transport.writelines([head, body])
        return fut
