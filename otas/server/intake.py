"""The engine process's end of `otas serve --http-workers`: a Unix socket that the HTTP front-end
processes (`workers.py`) connect to, one connection each (frames: `wire.py`).

A SUBMIT frame's pixels go to `Engine.submit_many` as views of the frame's buffer; its one answer
goes back as SERVED or REFUSED. A CANCEL (the client went away) cancels the request, as a
disconnect does in one process. A CALL (any endpoint but inference) runs through the engine
process's own ASGI app, in process, and its answer goes back as REPLY; after one that changed the
applications, every front end gets the new ones (APPS). When a front end's connection drops, its
requests are cancelled: nobody is left to answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from otas.engine.delivery import reported
from otas.engine.serving import NotServed, ServingEngine
from otas.server.wire import (
    Frame,
    FrameProtocol,
    Kind,
    WireError,
    pack,
    pack_served,
    unpack_submit,
)

log = logging.getLogger("otas.server")
META_MARGIN = 1 << 20
INTERNAL = b'{"error": "internal server error; see the server log", "reason": "internal"}'


def hello(engine: ServingEngine, preprocess: dict | None, max_frame: int) -> dict[str, Any]:
    """What a front end needs of the engine: sizes, classes, applications, the largest frame it
    reads, and the engine's clock (its `now_ms` at a `time.monotonic()` instant: both processes read
    the same monotonic clock)."""
    return {
        "max_frame": max_frame,
        "image_size": engine.image_size,
        "classes": engine.classes,
        "preprocess": preprocess,
        "apps": apps_of(engine),
        "clock_ms": engine.now_ms(),
        "monotonic_s": time.monotonic(),
    }


def apps_of(engine: ServingEngine) -> list[dict[str, Any]]:
    return [asdict(a) for a in engine.apps.values()]


class FrontEnds:
    """The front ends' doors as one, for the engine's /metrics (`Metrics.watch`): the sums of what
    each last reported (STATS), with the counts of front ends gone kept."""

    def __init__(self) -> None:
        self.now: dict[int, dict[str, float]] = {}
        self.gone = {"admitted": 0, "refused": 0}

    def _sum(self, key: str) -> float:
        return sum(float(s.get(key) or 0) for s in self.now.values())

    @property
    def admitted(self) -> float:
        return self.gone["admitted"] + self._sum("admitted")

    @property
    def refused(self) -> float:
        return self.gone["refused"] + self._sum("refused")

    @property
    def in_flight(self) -> float:
        return self._sum("in_flight")

    @property
    def limit(self) -> float:
        return self._sum("limit")

    @property
    def rate(self) -> float:
        return self._sum("rate")

    def left(self, key: int) -> None:
        last = self.now.pop(key, {})
        for k in self.gone:
            self.gone[k] += int(last.get(k) or 0)


class Intake:
    """The front ends' connections to one engine (see the module docstring)."""

    def __init__(self, engine: ServingEngine, app, max_body_bytes: int, preprocess: dict | None = None):
        self.engine, self.app, self.preprocess = engine, app, preprocess
        self.max_frame = max_body_bytes + META_MARGIN
        self.conns: set[_Conn] = set()
        self.calls: set[asyncio.Task] = set()
        self.fronts = FrontEnds()
        self.segments: dict[str, Any] = {}
        """Shared segments made for front ends (`ring.Segment`), by token, until each front end attaches."""
        self._server: asyncio.AbstractServer | None = None
        self._apps = apps_of(engine)

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Conn(self), path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    def apps_changed(self) -> None:
        """Send the applications to every front end if they changed."""
        now = apps_of(self.engine)
        if now != self._apps:
            self._apps = now
            head = pack(Kind.APPS, 0, {"apps": now})
            for c in self.conns:
                c.transport.write(head)


class _Conn(FrameProtocol):
    peer = "a front end"

    def __init__(self, intake: Intake):
        super().__init__(intake.max_frame)
        self.intake = intake
        self.pending: dict[int, asyncio.Future] = {}
        """Requests in the engine by id (proxied calls are not here: they always run to their end)."""
        self.segment = None
        """The front end's shared segment (a buffer), once it attached one."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.intake.conns.add(self)
        transport.write(pack(Kind.HELLO, 0, hello(self.intake.engine, self.intake.preprocess, self.intake.max_frame)))

    def connection_lost(self, exc) -> None:
        self.intake.conns.discard(self)
        self.intake.fronts.left(id(self))
        for f in list(self.pending.values()):
            f.cancel()  # its front end is gone: the engine counts it as a client gone
        self.pending.clear()

    def on_frame(self, f: Frame) -> None:
        if f.kind == Kind.SUBMIT:
            self.submit(f)
        elif f.kind == Kind.CANCEL:
            if (fut := self.pending.pop(f.id, None)) is not None:
                fut.cancel()
                # the final word on it: its pixels' place in the shared segment may now be reused
                self.refuse(f.id, NotServed("cancelled", "client_gone", "cancelled by its front end"))
        elif f.kind == Kind.STATS:
            counts = {k: v for k, v in f.meta.items() if isinstance(v, int | float)}
            if counts:  # (a front end without a front door reports none)
                self.intake.fronts.now[id(self)] = counts
            for ms in reported(f.meta.get("delivered")):
                self.intake.engine.delivered(ms)
        elif f.kind == Kind.ATTACH:
            seg = self.intake.segments.pop(str(f.meta.get("segment")), None)
            if seg is None:
                log.error("a front end attached an unknown segment", extra={"event": "wire_error"})
                self.transport.close()
                return
            self.segment = seg.map
        elif f.kind == Kind.CALL:
            # never cancelled: an admin call stopped halfway would leave the file, the engine and the
            # front ends disagreeing (its answer is dropped if nobody waits for it any more)
            task = asyncio.ensure_future(self.call(f))
            self.intake.calls.add(task)
            task.add_done_callback(self.intake.calls.discard)
        else:
            log.error("unexpected frame from a front end", extra={"event": "wire_error", "kind": int(f.kind)})
            self.transport.close()

    def submit(self, f: Frame) -> None:
        engine = self.intake.engine
        try:
            app, arrival, pixels = unpack_submit(f, engine.image_size, self.segment)
            fut = engine.submit_many(app, list(pixels), arrival)
        except NotServed as e:
            self.refuse(f.id, e)
            return
        except WireError as e:
            self.refuse(f.id, NotServed("rejected", "bad_request", str(e)))
            return
        self.pending[f.id] = fut
        fut.add_done_callback(lambda done, rid=f.id: self.answer(rid, done))

    def answer(self, rid: int, fut: asyncio.Future) -> None:
        if self.pending.pop(rid, None) is None or fut.cancelled():
            return  # cancelled by its front end, or the connection is gone
        e = fut.exception()
        if e is None:
            self.transport.writelines(pack_served(rid, fut.result()))
        elif isinstance(e, NotServed):
            self.refuse(rid, e)
        else:
            log.error("request failed", exc_info=e, extra={"event": "internal_error"})
            self.refuse(rid, NotServed("error", "internal", f"the engine failed on this request ({type(e).__name__})"))

    def refuse(self, rid: int, e: NotServed) -> None:
        if not self.transport.is_closing():
            meta = {"outcome": e.outcome, "reason": e.reason, "detail": e.detail}
            self.transport.write(pack(Kind.REFUSED, rid, meta))

    async def call(self, f: Frame) -> None:
        """Run a proxied HTTP request through the engine's app and send its answer (after the
        applications, if it changed them, so the front end serves the change it answers)."""
        m = f.meta
        try:
            status, headers, body = await run_asgi(self.intake.app, m, bytes(f.payload))
        except Exception:  # noqa: BLE001 - answered, not raised into the event loop
            log.exception("proxied call failed", extra={"event": "internal_error", "path": m.get("path")})
            status, headers, body = 500, [["content-type", "application/json"]], INTERNAL
        finally:
            if m.get("method") not in ("GET", "HEAD"):
                self.intake.apps_changed()
        if not self.transport.is_closing():
            self.transport.writelines([pack(Kind.REPLY, f.id, {"status": status, "headers": headers}, len(body)), body])


async def run_asgi(app, m: dict[str, Any], body: bytes) -> tuple[int, list[list[str]], bytes]:
    """(status, headers, body) of `app`'s answer to one HTTP request given as CALL meta: method,
    path, query (str), headers ([[name, value], ...], latin-1) and client ([host, port])."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in m.get("headers", [])]
    path = str(m.get("path", "/"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": str(m.get("method", "GET")),
        "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "root_path": "",
        "query_string": str(m.get("query", "")).encode("latin-1"), "headers": headers,
        "client": tuple(m["client"]) if m.get("client") else None, "server": None, "state": {},
    }  # fmt: skip
    sent = False
    gone = asyncio.Event()

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()  # the front end holds the client: a proxied call never sees it leave
        return {"type": "http.disconnect"}

    status, out_headers, chunks = 500, [], []

    async def send(message):
        nonlocal status, out_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)
